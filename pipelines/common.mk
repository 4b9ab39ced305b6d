# Shared helpers for the stage pipelines. Each stage's file target is its artifact's
# manifest.json: make reruns a stage only when an input artifact or its config changed, and
# the stage itself is a no-op on identical inputs and config.

# Continue a killed training run instead of refusing its unfinished folder.
resume_flag = $(if $(wildcard $(1)/checkpoints/last.pt),--resume)
# Launch training on N GPUs through torchrun (GPUS=1: a plain process).
GPUS ?= 1
TRAIN_LAUNCH = $(if $(filter-out 0 1,$(GPUS)),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(GPUS) -m cli.main,$(M2S))
