# `make demo`: synth -> fuse -> teacher -> baseline student -> distilled student -> evaluate,
# on the embedded synthetic dataset, sized for a 2-core CPU (see README for measured times).
include pipelines/common.mk

DEMO ?= runs/demo
# Generator 3 makes hard classes as rare as on real streets (docs/synthetic.md), so the demo draws
# many short sequences: 6 x 15 training scans and 9 x 15 validation scans (the study's `cpu` size,
# generator seed 0) hold a few instances of most hard classes.
DEMO_SYNTH_ARGS ?= --sequences 00-14 --test-sequences none --scans 15 --beams 32 --columns 512 --seed 0
DEMO_TRAIN_SEQ ?= 00,01,02,03,04,05
DEMO_VAL_SEQ ?= 06,07,08,09,10,11,12,13,14
DEMO_TEACHER_CFG ?= pipelines/configs/demo-teacher.yaml
DEMO_STUDENT_CFG ?= pipelines/configs/demo-student.yaml
DEMO_TRAIN_ARGS ?=
# `make demo-images`: the README's "Look at the results" images, from the demo's validation cache.
DEMO_IMAGES ?= docs/images
DEMO_SHOW_SEQ ?= 07
DEMO_SHOW_FRAME ?= 7
DEMO_SHOW_ARGS ?= --views bev,range,fused --crops --max-crops 3 --extent 30 --resolution 0.1 --point-px 2

.PHONY: demo demo-clean demo-images
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

# Ground truth beside the baseline's and the distilled student's predictions (and their errors) in
# bird's-eye and range views, the fused block by source frame, crops of hard-class instances, and
# the student's training curves.
demo-images: $(DEMO)/baseline/manifest.json $(DEMO)/student/manifest.json $(DEMO)/fused-val/manifest.json
	$(M2S) show --sequence $(DEMO_SHOW_SEQ) --frames $(DEMO_SHOW_FRAME) --data $(DEMO)/data --cache $(DEMO)/fused-val \
		--model $(DEMO)/baseline --model $(DEMO)/student $(DEMO_SHOW_ARGS) --out $(DEMO)/images
	mkdir -p $(DEMO_IMAGES)
	for v in bev range fused crops; do \
		cp $(DEMO)/images/$$(printf '%s_%06d' $(DEMO_SHOW_SEQ) $(DEMO_SHOW_FRAME))_$$v.png $(DEMO_IMAGES)/show-$$v.png; done
	cp $(DEMO)/student/plots/training.png $(DEMO_IMAGES)/training.png
	@echo "images: $(DEMO_IMAGES)/show-{bev,range,fused,crops}.png $(DEMO_IMAGES)/training.png"

demo-clean:
	rm -rf $(DEMO)
