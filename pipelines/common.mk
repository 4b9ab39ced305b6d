ifndef M2S_COMMON_MK
M2S_COMMON_MK := 1
# Shared helpers for the stage pipelines. Each stage's file target is its artifact's
# manifest.json: make reruns a stage only when an input artifact or its config changed, and
# the stage itself is a no-op on identical inputs and config.

# Continue a killed training run instead of refusing its unfinished folder.
resume_flag = $(if $(wildcard $(1)/checkpoints/last.pt),--resume)
# Launch training on N GPUs through torchrun (GPUS=1: a plain process).
GPUS ?= 1
TRAIN_LAUNCH = $(if $(filter-out 0 1,$(GPUS)),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(GPUS) -m cli.main,$(M2S))

# The training and evaluation half of every pipeline, from the two fused caches in DIR:
#   $(eval $(call m2s_chain,DIR,TEACHER_CONFIG,STUDENT_CONFIG,EXTRA_TRAIN_ARGS))
# teacher (fused input), baseline student (--kd none), distilled student (frozen teacher), joint
# student (--mode joint: the official shared-weight scheme, no teacher artifact), then the four
# side by side on the validation cache (each model on the input it was trained on).
define m2s_chain
$(1)/teacher/manifest.json: $(1)/fused-train/manifest.json $(1)/fused-val/manifest.json $(2)
	$$(TRAIN_LAUNCH) train-teacher --cache $(1)/fused-train --val-cache $(1)/fused-val --out $(1)/teacher \
		--config $(2) $(4) $$(call resume_flag,$(1)/teacher)

$(1)/baseline/manifest.json: $(1)/fused-train/manifest.json $(1)/fused-val/manifest.json $(3)
	$$(TRAIN_LAUNCH) distill --kd none --cache $(1)/fused-train --val-cache $(1)/fused-val --out $(1)/baseline \
		--config $(3) $(4) $$(call resume_flag,$(1)/baseline)

$(1)/student/manifest.json: $(1)/teacher/manifest.json $(1)/fused-train/manifest.json $(1)/fused-val/manifest.json $(3)
	$$(TRAIN_LAUNCH) distill --teacher $(1)/teacher --cache $(1)/fused-train --val-cache $(1)/fused-val \
		--out $(1)/student --config $(3) $(4) $$(call resume_flag,$(1)/student)

$(1)/joint/manifest.json: $(1)/fused-train/manifest.json $(1)/fused-val/manifest.json $(3)
	$$(TRAIN_LAUNCH) distill --mode joint --cache $(1)/fused-train --val-cache $(1)/fused-val \
		--out $(1)/joint --config $(3) $(4) $$(call resume_flag,$(1)/joint)

$(1)/eval/manifest.json: $(1)/teacher/manifest.json $(1)/baseline/manifest.json $(1)/student/manifest.json $(1)/joint/manifest.json
	$$(M2S) evaluate $(1)/teacher $(1)/baseline $(1)/student $(1)/joint --cache $(1)/fused-val --out $(1)/eval
endef
endif
