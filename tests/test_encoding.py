"""One encoder: evaluation scores a fine-tuned model on exactly the token ids training labelled, with the same
special tokens, for a tokenizer that adds BOS (a tiny LLaMA-style one) and for the byte-level ChatML one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ift_utils import encoding, prompts
from ift_utils.probing import PromptSpec, encode_question, score_mcqs, score_reference
from ift_utils.records import MCQ
from ift_utils.training import IGNORE, encode_example

# Mistral / LLaMA-2 style: the chat template writes the BOS itself, so add_special_tokens=True would double it.
LLAMA_CHAT = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
CORPUS = ["A chat between a curious user and an artificial intelligence assistant. USER: In which country is the "
          "city of Lyon? ASSISTANT: Answer: France [INST] [/INST]",
          "Answer: Spain Italy Germany France. The answer is B. A. B. C. D. Because it is."] * 20


@pytest.fixture(scope="module")
def llama():
    """(model, tokenizer): a SentencePiece-like BPE (Metaspace, dummy prefix) whose post-processor adds `<s>`,
    as LLaMA/Mistral tokenizers do, and a tiny random Llama over its vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:?!'[]/\n▁")
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=alphabet))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="</s>")
    tok.chat_template = LLAMA_CHAT
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


@pytest.fixture
def qs() -> list[MCQ]:
    return [MCQ(id=i, question=f"In which country is the city of Lyon{'x' * i}?",
                choices=("France", "Spain", "Italy", "Germany"), answer=i % 4, domain="geo", subject="geography")
            for i in range(4)]


def test_llama_style_tokenizer_adds_bos(llama):
    _, tok = llama
    assert tok("Answer: France").input_ids[0] == tok.bos_token_id
    assert encoding.special_prefix(tok) == [tok.bos_token_id]


def test_special_prefix_of_a_tokenizer_without_bos_is_empty(tiny):
    _, tok = tiny
    assert encoding.special_prefix(tok) == []
    assert encoding.encode_prompt(tok, "Hi", bos=True) == encoding.encode_prompt(tok, "Hi", bos=False)


def test_prompt_gets_bos_once_and_none_when_off(llama):
    _, tok = llama
    bos = tok.bos_token_id
    plain = encoding.encode_prompt(tok, "USER: Lyon? ASSISTANT: ", bos=True)
    assert plain[0] == bos and plain.count(bos) == 1
    templated = encoding.encode_prompt(tok, prompts.chat("Lyon?", "model", tok), bos=True)  # text starts with <s>
    assert templated[0] == bos and templated.count(bos) == 1
    assert bos not in encoding.encode_prompt(tok, "USER: Lyon? ASSISTANT: ", bos=False)
    enc = encode_example(tok, prompts.chat("Lyon?", "model", tok), "Answer: France", 64)
    assert enc["input_ids"].count(bos) == 1


def _training_encodings(tok, q: MCQ, spec: PromptSpec) -> list[dict]:
    """Each option's training example as the study builds it: chat prompt, response with an explanation."""
    prompt = prompts.chat(prompts.ift_query(q, mode=spec.mode), spec.template, tok)
    return [encode_example(tok, prompt, prompts.ift_response(q, i, "Because it is.", spec.mode), 256, bos=spec.bos)
            for i in range(len(q.choices))]


def _answer_ids(tok, q: MCQ, i: int, mode: str) -> list[int]:
    """The ids training labels for option i's answer: response tokens of `Answer: text` after those of `Answer:`
    (cloze), or the response's first token (letter)."""
    resp = tok(prompts.ift_response(q, i, "", mode), add_special_tokens=False).input_ids
    if mode == "letter":
        return resp[:1]
    return resp[len(tok("Answer:", add_special_tokens=False).input_ids):]


@pytest.mark.parametrize("which", ["llama", "tiny"])
@pytest.mark.parametrize("template", ["vicuna", "model"])
@pytest.mark.parametrize("mode", ["cloze", "letter"])
def test_evaluation_scores_the_ids_training_labels(request, which, template, mode, qs):
    _, tok = request.getfixturevalue(which)
    spec = PromptSpec(mode=mode, template=template)
    for q in qs:
        rows = encode_question(tok, q, spec)
        for i, (enc, (ctx, scored)) in enumerate(zip(_training_encodings(tok, q, spec), rows, strict=True)):
            end = len(ctx) + len(scored)
            assert enc["input_ids"][:end] == ctx + scored  # same special tokens, same prompt, same seam
            assert enc["labels"][len(ctx):end] == scored  # every scored id is a trained response id
            assert scored == _answer_ids(tok, q, i, mode)
            n_prompt = enc["labels"].index(next(x for x in enc["labels"] if x != IGNORE))
            assert len(ctx) >= n_prompt  # the context holds the whole prompt ...
            assert (len(ctx) == n_prompt) == (mode == "letter")  # ... and, in cloze mode, `Answer:` too


def _training_probs(model, tok, q: MCQ, spec: PromptSpec) -> np.ndarray:
    """Option probabilities computed from the training encoding itself: the mean log-prob of each option's
    labelled answer ids (cloze) or its first response token's logit (letter), softmax over options."""
    scores = []
    for i, enc in enumerate(_training_encodings(tok, q, spec)):
        ids = enc["input_ids"]
        start = enc["labels"].index(next(x for x in enc["labels"] if x != IGNORE))
        answer = _answer_ids(tok, q, i, spec.mode)
        start += 0 if spec.mode == "letter" else len(tok("Answer:", add_special_tokens=False).input_ids)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        if spec.mode == "letter":
            scores.append(logits[start - 1, answer[0]].item())
        else:
            logp = torch.log_softmax(logits, -1)
            scores.append(np.mean([logp[start - 1 + j, t].item() for j, t in enumerate(answer)]))
    z = np.exp(np.array(scores) - max(scores))
    return z / z.sum()


@pytest.mark.parametrize("template", ["vicuna", "model"])
@pytest.mark.parametrize("mode", ["cloze", "letter"])
def test_scores_equal_the_training_sequences_likelihood(llama, qs, template, mode):
    model, tok = llama
    spec = PromptSpec(mode=mode, template=template)
    want = np.array([_training_probs(model, tok, q, spec) for q in qs])
    for two_level in (True, False):
        got = np.array(score_mcqs(model, tok, qs, spec, max_batch=3, show_progress=False,
                                  two_level=two_level).probs.tolist())
        assert np.abs(got - want).max() < 1e-5
    ref = np.array(score_reference(model, tok, qs, spec).probs.tolist())
    assert np.abs(ref - want).max() < 1e-5


def test_bos_policy_per_test_set(llama, qs):
    """Paper mode: BOS for the domain's own data, none for MMLU; plain mode: the tokenizer's default everywhere."""
    _, tok = llama
    bos = tok.bos_token_id
    for spec in (PromptSpec(mode="cloze", template="vicuna"), PromptSpec(mode="letter", demos=tuple(qs[:1]))):
        with_bos = encode_question(tok, qs[1], spec)
        assert all(ctx[0] == bos and ctx.count(bos) == 1 for ctx, _ in with_bos)
        from dataclasses import replace

        without = encode_question(tok, qs[1], replace(spec, bos=False))
        assert all(bos not in ctx for ctx, _ in without)
        assert [s for _, s in without] == [s for _, s in with_bos]


def test_truncation_keeps_bos(llama):
    _, tok = llama
    prompt, response = "USER: In which country is the city of Lyon? ASSISTANT: ", "Answer: France"
    n_response = len(tok(response, add_special_tokens=False).input_ids) + 1
    enc = encode_example(tok, prompt, response, max_length=n_response + 3)
    assert enc["truncated"] and len(enc["input_ids"]) == n_response + 3
    assert enc["input_ids"][0] == tok.bos_token_id
    assert enc["input_ids"][1:3] == tok(prompt, add_special_tokens=False).input_ids[-2:]
    assert encode_example(tok, prompt, response, max_length=n_response + 1) is None  # BOS only, no prompt token
    assert encode_example(tok, prompt, response, max_length=n_response + 1, bos=False) is not None


def test_split_scored_keeps_a_context_and_a_scored_token():
    assert encoding.split_scored([1, 2, 3], [1, 2, 3, 4, 5]) == ([1, 2, 3], [4, 5])
    assert encoding.split_scored([1, 2, 3], [1, 2, 9]) == ([1, 2], [9])
    assert encoding.split_scored([1, 2, 3], [1, 2, 3]) == ([1, 2], [3])
    with pytest.raises(ValueError, match="nothing to condition on"):
        encoding.split_scored([1], [2, 3])
