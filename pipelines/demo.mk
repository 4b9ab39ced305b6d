# `make demo`: synth -> fuse -> teacher -> baseline student -> distilled student -> evaluate,
# on the embedded synthetic dataset, sized for a 2-core CPU (see README for measured times).
include pipelines/common.mk

DEMO ?= runs/demo
DEMO_SYNTH_ARGS ?= --sequences 00,01,08 --test-sequences none --scans 40 --beams 32 --columns 512 --seed 0
DEMO_TRAIN_SEQ ?= 00,01
DEMO_VAL_SEQ ?= 08
DEMO_TEACHER_CFG ?= pipelines/configs/demo-teacher.yaml
DEMO_STUDENT_CFG ?= pipelines/configs/demo-student.yaml
DEMO_TRAIN_ARGS ?=

.PHONY: demo demo-clean
demo: $(DEMO)/eval/manifest.json
	@echo "comparison table: $(DEMO)/eval/evaluation.csv   plots: $(DEMO)/eval/plots/"
	@column -s, -t < $(DEMO)/eval/evaluation.csv

$(DEMO)/data/manifest.json:
	$(M2S) synth $(DEMO)/data $(DEMO_SYNTH_ARGS)

$(DEMO)/fused-train/manifest.json: $(DEMO)/data/manifest.json
	$(M2S) fuse $(DEMO)/data --sequences $(DEMO_TRAIN_SEQ) --out $(DEMO)/fused-train

$(DEMO)/fused-val/manifest.json: $(DEMO)/data/manifest.json
	$(M2S) fuse $(DEMO)/data --sequences $(DEMO_VAL_SEQ) --out $(DEMO)/fused-val

$(eval $(call m2s_chain,$(DEMO),$(DEMO_TEACHER_CFG),$(DEMO_STUDENT_CFG),$(DEMO_TRAIN_ARGS)))

demo-clean:
	rm -rf $(DEMO)
