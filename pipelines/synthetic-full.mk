# `make synth-full [GPUS=N]`: full-size synthetic benchmark (64x2048 scans, ~125k points each)
# for GPU runs: 6 training sequences + 1 validation sequence, paper-scale networks at 0.05 m.
include pipelines/common.mk

FULL ?= runs/synth-full
FULL_SYNTH_ARGS ?= --sequences 00,01,02,03,04,05,08 --test-sequences none --scans 200 --beams 64 --columns 2048 --seed 0 --workers 4
FULL_TRAIN_SEQ ?= 00-05
FULL_VAL_SEQ ?= 08
FULL_TEACHER_CFG ?= pipelines/configs/full-teacher.yaml
FULL_STUDENT_CFG ?= pipelines/configs/full-student.yaml

.PHONY: synth-full
synth-full: $(FULL)/eval/manifest.json
	@column -s, -t < $(FULL)/eval/evaluation.csv

$(FULL)/data/manifest.json:
	$(M2S) synth $(FULL)/data $(FULL_SYNTH_ARGS)

$(FULL)/fused-train/manifest.json: $(FULL)/data/manifest.json
	$(M2S) fuse $(FULL)/data --sequences $(FULL_TRAIN_SEQ) --workers 4 --out $(FULL)/fused-train

$(FULL)/fused-val/manifest.json: $(FULL)/data/manifest.json
	$(M2S) fuse $(FULL)/data --sequences $(FULL_VAL_SEQ) --out $(FULL)/fused-val

$(eval $(call m2s_chain,$(FULL),$(FULL_TEACHER_CFG),$(FULL_STUDENT_CFG),))
