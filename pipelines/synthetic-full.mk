# `make synth-full [GPUS=N]`: full-size synthetic benchmark (64x2048 scans, ~125k points each)
# for GPU runs: 6 training sequences + 1 validation sequence, paper-scale networks at 0.05 m.
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

$(FULL)/teacher/manifest.json: $(FULL)/fused-train/manifest.json $(FULL)/fused-val/manifest.json $(FULL_TEACHER_CFG)
	$(TRAIN_LAUNCH) train-teacher --cache $(FULL)/fused-train --val-cache $(FULL)/fused-val --out $(FULL)/teacher \
		--config $(FULL_TEACHER_CFG) $(call resume_flag,$(FULL)/teacher)

$(FULL)/baseline/manifest.json: $(FULL)/fused-train/manifest.json $(FULL)/fused-val/manifest.json $(FULL_STUDENT_CFG)
	$(TRAIN_LAUNCH) distill --kd none --cache $(FULL)/fused-train --val-cache $(FULL)/fused-val --out $(FULL)/baseline \
		--config $(FULL_STUDENT_CFG) $(call resume_flag,$(FULL)/baseline)

$(FULL)/student/manifest.json: $(FULL)/teacher/manifest.json $(FULL)/fused-train/manifest.json $(FULL)/fused-val/manifest.json $(FULL_STUDENT_CFG)
	$(TRAIN_LAUNCH) distill --teacher $(FULL)/teacher --cache $(FULL)/fused-train --val-cache $(FULL)/fused-val \
		--out $(FULL)/student --config $(FULL_STUDENT_CFG) $(call resume_flag,$(FULL)/student)

$(FULL)/eval/manifest.json: $(FULL)/teacher/manifest.json $(FULL)/baseline/manifest.json $(FULL)/student/manifest.json
	$(M2S) evaluate $(FULL)/teacher $(FULL)/baseline $(FULL)/student --cache $(FULL)/fused-val --out $(FULL)/eval
