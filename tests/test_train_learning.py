"""SCoRe learns to self-correct on a toy two-turn task, on CPU, through the real trainer.

The task: 8 questions q0..q7, each with one correct answer among a0..a3. A 2-layer Llama with its
own 24-word vocabulary gets base competence from a short supervised warm-up in the test: at turn 1
it answers correctly half the time (the rest spread over the three wrong answers); at turn 2 it
copies its first attempt 70% of the time (the warm-up target), like a model with no self-correction. Then Stage I and
Stage II run through `harness.train.trainer.train` (episodes, engine, grader, masks, objective,
optimizer, checkpoints, --eval-every), and the harness's own `execute_run` measures the policy before
and after with sampled decoding (temperature 1, 64 episodes per question), so acc_t1 measures the
first-attempt distribution the model learned rather than its mode.
"""

from __future__ import annotations

import json

import pytest
import torch

from harness.config import RunConfig
from harness.grading import Verdict, register
from harness.run import execute_run
from harness.train.config import TrainConfig
from harness.train.state import read_log
from harness.train.trainer import train

QUESTIONS, ANSWERS = 8, 4
GOLD = [2, 0, 3, 1, 1, 2, 0, 3]  # the correct answer index of each question
P_CORRECT_T1, P_COPY_T2 = 0.5, 0.7
WARMUP_LR = 3e-3
# RL settings of the toy, and why they differ from the paper's (β1 = 0.01, β2 = 0.1):
# - β2 = 1.0: the toy's 64-wide model shares nearly all its weights between the two turns, so without
#   a stronger anchor Stage I's turn-2 updates drag turn 1 along.
# - β1 = 1.0: turn 1 here is an 8-item lookup the model can learn perfectly, so with β1 = 0.01 Stage
#   II's reward on attempt 1 drove acc_t1 to 0.98 within a few steps and left nothing to correct
#   (measured). The larger KL weight stands in for a task too hard to solve in one attempt: the
#   KL-regularised optimum of turn 1 is the base tilted by e^{r1/β1} (acc_t1 about 0.73 from the base's
#   0.5), while turn 2's shaped reward r2 + α(r2 − r1) still pulls it to the right answer.
# - seeds 0, 1 and 2 all pass with these settings and margins (measured); the test runs seed 0.
STAGE1_STEPS, STAGE2_STEPS, LR, BETA2 = 100, 20, 2e-3, 1.0
BETA1 = 1.0
SEED = 0
EVAL_SAMPLES = 64  # per question: 512 sampled episodes per evaluation
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TASK_YAML = """\
name: toy
grader: toy-exact
data: {id_field: id, answer_field: answer, required_fields: [problem, answer]}
prompts: {first_turn: "{{ problem }}", correction: retry}
generation: {max_new_tokens: 3}
"""


class ExactGrader:
    def grade(self, items):
        return [Verdict(extracted=r.strip(), correct=r.strip() == str(p.answer)) for r, p in items]

    def close(self):
        pass


register("toy-exact")(ExactGrader)


def toy_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<|end|>", "<|user|>", "<|assistant|>", "retry"]
    words += [f"q{i}" for i in range(QUESTIONS)] + [f"a{j}" for j in range(ANSWERS)]
    words += [f"w{i}" for i in range(24 - len(words))]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|end|>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def toy_model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def warm_up(model, tok, steps: int = 200) -> None:
    """Supervised warm-up on soft targets: turn 1 right with P_CORRECT_T1, turn 2 a copy with P_COPY_T2.

    Every sequence of a kind has the same length, so each kind is one batch: turn 1 is
    [user q end assistant] -> answer, end; turn 2 appends [user retry end assistant] -> answer, end.
    """
    ids = tok.convert_tokens_to_ids
    end, user, asst, retry = ids("<|end|>"), ids("<|user|>"), ids("<|assistant|>"), ids("retry")
    answer_ids = torch.tensor([ids(f"a{j}") for j in range(ANSWERS)])
    turn1, target1, turn2, target2 = [], [], [], []
    for q in range(QUESTIONS):
        prompt = [user, ids(f"q{q}"), end, asst]
        t1 = torch.full((ANSWERS,), (1 - P_CORRECT_T1) / (ANSWERS - 1))
        t1[GOLD[q]] = P_CORRECT_T1
        turn1.append(prompt + [int(answer_ids[GOLD[q]]), end])
        target1.append(t1)
        for j in range(ANSWERS):
            t2 = torch.full((ANSWERS,), (1 - P_COPY_T2) / (ANSWERS - 1))
            t2[j] = P_COPY_T2
            turn2.append(prompt + [int(answer_ids[j]), end, user, retry, end, asst, int(answer_ids[j]), end])
            target2.append(t2)
    batches = [(torch.tensor(turn1), torch.stack(target1)), (torch.tensor(turn2), torch.stack(target2))]
    optimizer = torch.optim.Adam(model.parameters(), lr=WARMUP_LR)
    model.train()
    for _ in range(steps):
        loss = 0.0
        for seqs, target in batches:
            logp = torch.log_softmax(model(seqs).logits, -1)
            n = seqs.shape[1]
            loss = loss - (target * logp[:, n - 3, answer_ids]).sum(-1).mean()  # the answer (soft target)
            loss = loss - logp[:, n - 2, end].mean()  # then end the turn
            loss = loss - logp[:, 4, end].mean()  # the first attempt ends after its answer too
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def evaluate(task_path, data_path, engine, out_dir, name) -> dict:
    config = RunConfig(
        task=str(task_path),
        data=str(data_path),
        turns=2,
        samples=EVAL_SAMPLES,
        temperature=1.0,
        seed=123,
        batch_size=256,
        output_dir=str(out_dir),
        run_name=name,
    )
    return execute_run(config, engine=engine).summary


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model gains nothing from threads; one thread keeps results repeatable
    root = tmp_path_factory.mktemp("toy")
    (root / "toy.yaml").write_text(TASK_YAML)
    with (root / "train.jsonl").open("w") as fh:
        for q in range(QUESTIONS):
            fh.write(json.dumps({"id": f"q{q}", "problem": f"q{q}", "answer": f"a{GOLD[q]}"}) + "\n")
    yield root
    torch.set_num_threads(threads)


def test_stage1_then_stage2_teach_the_toy_model_to_correct_itself(toy):
    from harness.engines.hf import HFEngine

    tok = toy_tokenizer()
    model = toy_model(tok)
    warm_up(model, tok)
    base = evaluate(toy / "toy.yaml", toy / "train.jsonl", HFEngine(model, tok, "toy"), toy / "evals", "base")

    config = TrainConfig(
        task=str(toy / "toy.yaml"),
        data=str(toy / "train.jsonl"),
        output_dir=str(toy / "run"),
        stage1_steps=STAGE1_STEPS,
        stage2_steps=STAGE2_STEPS,
        batch_size=64,
        samples=8,
        micro_batch_size=64,
        rollout_batch_size=256,
        lr=LR,
        max_grad_norm=1.0,
        eval_every=1000,
        eval_data=str(toy / "train.jsonl"),
        eval_temperature=1.0,
        eval_samples=EVAL_SAMPLES,
        save_every=1000,
        device="cpu",
        beta2=BETA2,
        beta1=BETA1,
        seed=SEED,
    )
    result = train(config, model=model, tokenizer=tok)
    trained = evaluate(toy / "toy.yaml", toy / "train.jsonl", HFEngine(model, tok, "toy"), toy / "evals", "trained")
    rows = read_log(result.log_path)
    stage1_end = next(r for r in rows if r["stage"] == "1" and r["eval_acc_t1"])
    print("base", {k: base[k] for k in ("acc_t1", "acc_t2", "delta_i2c_t1_t2", "delta_c2i_t1_t2")})
    print("stage1 end", {k: stage1_end[k] for k in ("eval_acc_t1", "eval_acc_t2", "eval_i2c", "eval_c2i")})
    print("trained", {k: trained[k] for k in ("acc_t1", "acc_t2", "delta_i2c_t1_t2", "delta_c2i_t1_t2")})
    # Measured on this machine (1 thread), 512 sampled episodes each, for seeds 0 / 1 / 2, with the hf
    # engine sampling each conversation from its own seed:
    #   base:         acc_t1 0.492              acc_t2 0.389              i2c 0.057  c2i 0.160
    #   after I:      acc_t1 0.518/0.475/0.477  acc_t2 0.533/0.480/0.463  c2i 0.082/0.092/0.100
    #   after I + II: acc_t1 0.912/0.854/0.850  acc_t2 0.938/0.934/0.945
    #                 i2c 0.057/0.115/0.127     c2i 0.031/0.035/0.031
    # Margins are about half the smallest measured gap; one standard error of an accuracy here is
    # <= 0.022, of a paired difference about 0.015. Two are tighter since hf samples per conversation
    # (same settings; with one seed per batch seed 0 had measured 0.879 / 0.957 and i2c 0.105): seed
    # 0's second attempt beats its first by only 0.025, hence the 0.01 margin there, and its i2c
    # (0.057) sits just above the 0.05 bound. β1 = 2.0 held acc_t1 near 0.65 but failed seed 1's
    # Stage I check and seed 2's c2i bound (measured), so β1 stays 1.0.
    assert abs(float(stage1_end["eval_acc_t1"]) - base["acc_t1"]) <= 0.1  # Stage I keeps turn 1 near the base
    assert float(stage1_end["eval_acc_t2"]) >= base["acc_t2"] + 0.04  # while turn 2 improves
    assert float(stage1_end["eval_c2i"]) <= base["delta_c2i_t1_t2"] - 0.035  # and breaks fewer right answers
    assert trained["acc_t2"] >= trained["acc_t1"] + 0.01  # after Stage II the second attempt beats the first
    assert trained["acc_t2"] >= base["acc_t2"] + 0.3  # and the untrained model's second attempt
    assert trained["delta_i2c_t1_t2"] >= 0.05  # by correcting wrong first attempts
    assert trained["delta_c2i_t1_t2"] <= 0.05  # while rarely breaking right ones
    assert result.checkpoints[2].joinpath("config.json").is_file()
