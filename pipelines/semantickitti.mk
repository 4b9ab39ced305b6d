# `make kitti DATA=/path/to/semantic-kitti [GPUS=N]`: the paper-scale chain on the real dataset.
# Train 00-07,09,10; validate 08; MinkUNet at 0.05 m; the paper's hard classes; window 4.
# Exports test-split (11-21) predictions in the benchmark submission layout.
include pipelines/common.mk

KITTI ?= runs/kitti
KITTI_TRAIN_SEQ ?= 00-07,09,10
KITTI_VAL_SEQ ?= 08
KITTI_TEST_SEQ ?= 11-21
KITTI_WINDOW ?= 4
KITTI_FUSE_WORKERS ?= 8
KITTI_TEACHER_CFG ?= pipelines/configs/kitti-teacher.yaml
KITTI_STUDENT_CFG ?= pipelines/configs/kitti-student.yaml

.PHONY: kitti kitti-check
kitti: kitti-check $(KITTI)/eval/manifest.json $(KITTI)/submission/manifest.json

kitti-check:
	@test -n "$(DATA)" || { echo "set DATA=/path/to/semantic-kitti (the folder holding sequences/)"; exit 2; }
	@test -d "$(DATA)/sequences" || { echo "$(DATA) has no sequences/ folder"; exit 2; }

$(KITTI)/fused-train/manifest.json: | kitti-check
	$(M2S) fuse $(DATA) --sequences $(KITTI_TRAIN_SEQ) --window $(KITTI_WINDOW) --workers $(KITTI_FUSE_WORKERS) --out $(KITTI)/fused-train

$(KITTI)/fused-val/manifest.json: | kitti-check
	$(M2S) fuse $(DATA) --sequences $(KITTI_VAL_SEQ) --window $(KITTI_WINDOW) --out $(KITTI)/fused-val

# Teacher on fused input, baseline and student on single scans, all scored on the original points.
$(eval $(call m2s_chain,$(KITTI),$(KITTI_TEACHER_CFG),$(KITTI_STUDENT_CFG),))

$(KITTI)/submission/manifest.json: $(KITTI)/student/manifest.json | kitti-check
	$(M2S) evaluate $(KITTI)/student --data $(DATA) --sequences $(KITTI_TEST_SEQ) --export-labels --out $(KITTI)/submission
