"""The sampler and both trainers on a tiny random model of each family, with the family's tokenizer and chat layout:
Llama-2 (sentencepiece, [INST] as text), Mistral v0.3 (sentencepiece, [INST] control tokens, rope theta 1e6),
Qwen2.5 (ChatML, biases on q, k and v, tied embeddings), Llama 3.1 (Meta's tiktoken tokenizer, rope scaling).

The method's own code is the same for all of them: what differs is in the checkpoint."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import model
from model.convert import byte_level_tokenizer
from model.llama import PRESETS, ModelArgs, Transformer
from model.tokenizer import BPETokenizer, SentencePieceTokenizer
from sample.sampler import Sampler, SamplingParams
from test_convert import write_tiktoken
from test_sampler import greedy_by_recomputation
from test_train_dpo import metrics, one_thread, run_dpo  # noqa: F401 (an autouse fixture)
from test_train_sft import run_sft
from train.data import response_tokens

FAMILIES = ["llama2", "mistral", "qwen2.5", "llama3.1"]
PROMPT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the score?"}]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, sp_model_file, mistral_sp_model_file):
    """{family: a random tiny checkpoint of that family}."""
    root = tmp_path_factory.mktemp("families")
    write_tiktoken(root / "tokenizer.model")
    tokenizers = {"llama2": SentencePieceTokenizer(sp_model_file),
                  "mistral": SentencePieceTokenizer(mistral_sp_model_file),
                  "qwen2.5": byte_level_tokenizer(), "llama3.1": BPETokenizer.from_tiktoken(root / "tokenizer.model")}
    shape = {"llama2": {}, "mistral": {"rope_theta": 1e6}, "qwen2.5": {"qkv_bias": True, "tie_embeddings": True,
                                                                        "rope_theta": 1e6},
             "llama3.1": {"rope_theta": 500000.0, "rope_scaling_factor": 8.0, "rope_original_max_seq_len": 64}}
    paths = {}
    for family, tokenizer in tokenizers.items():
        args = ModelArgs(**{**vars(PRESETS["tiny"]), "vocab_size": tokenizer.vocab_size, "max_seq_len": 512,
                            **shape[family]})
        paths[family] = root / family
        model.save_model(paths[family], Transformer(args).init_weights(std=0.3, seed=0), tokenizer)
    return paths


@pytest.mark.parametrize("family", FAMILIES)
def test_the_sampler_answers_a_chat_prompt_as_recomputation_does(checkpoints, family):
    net, tokenizer = model.load(checkpoints[family])
    assert tokenizer.chat_format == {"llama2": "llama2", "mistral": "mistral", "qwen2.5": "chatml",
                                     "llama3.1": "llama3"}[family]
    prompt = tokenizer.encode_chat(PROMPT)
    want = greedy_by_recomputation(net, prompt, 12, tokenizer.stop_ids)
    [[completion]] = Sampler(net, tokenizer).generate([prompt], SamplingParams(temperature=0, max_new_tokens=12))
    assert (completion.token_ids, completion.finish_reason) == want
    assert completion.text == tokenizer.decode(want[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_sft_and_dpo_take_a_step(tmp_path, checkpoints, family, capsys):
    """SFT's first logged loss is the response tokens' mean NLL recomputed here; DPO's first step, with the policy
    still the reference, logs log 2 and a zero margin (the DPO loss at equal log-ratios)."""
    row = {"messages": PROMPT, "response": "Ten points."}
    data = tmp_path / "sft.jsonl"
    data.write_text((json.dumps(row) + "\n") * 4)  # one example four times: the first step's batch, in any order
    code, err = run_sft(capsys, "--config", "configs/sft-tiny.yaml", "--model", checkpoints[family], "--data", data,
                        "--out", tmp_path / "m1", "--set", "max_steps=1", "dropout=0")
    assert code == 0, err
    net, tokenizer = model.load(checkpoints[family])
    prompt, reply = response_tokens(tokenizer, PROMPT, "Ten points.")
    with torch.no_grad():
        logp = F.log_softmax(net(torch.tensor([prompt + reply]))[0].double(), -1)
    nll = -logp[len(prompt) - 1:-1].gather(1, torch.tensor(reply)[:, None]).mean().item()
    assert metrics(tmp_path / "m1")[0]["loss"] == pytest.approx(nll, rel=1e-5)

    pairs = tmp_path / "pairs.jsonl"
    pair = {"prompt": "What is the score?", "chosen": "Ten points.", "rejected": "No idea.", "score_chosen": 5,
            "score_rejected": 1}
    pairs.write_text((json.dumps(pair) + "\n") * 4)
    code, err = run_dpo(capsys, checkpoints[family], pairs, tmp_path / "m2", "max_steps=1", "dropout=0")
    assert code == 0, err
    logged = metrics(tmp_path / "m2")[0]
    assert logged["loss"] == pytest.approx(math.log(2), abs=1e-5) and logged["margins"] == pytest.approx(0, abs=1e-4)
    trained, _ = model.load(tmp_path / "m2")
    assert trained.args == net.args and not torch.equal(trained.layers[0].attention.wq.weight,
                                                        net.layers[0].attention.wq.weight)
