"""Real engines on this machine, with nothing downloaded: tiny random-weight Qwen2 models, a
tokenizer built in-process, and ``transformers serve --continuous-batching`` processes on
loopback ports. Used by the tests, by ``bes-validate`` runs on a CPU and by anyone who wants to
try ``pool=engines`` without a GPU.

``transformers serve`` batches continuously (paged attention) on CPU for Llama/Qwen2
architectures (not OPT: its paged cache lacks ``get_seq_length``); it needs ``accelerate``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

#: (layers, hidden, intermediate, heads, kv heads) of the small / medium / large tiny models
TINY_QWEN = {"qwen-s": (1, 64, 128, 4, 2), "qwen-m": (2, 128, 256, 4, 2), "qwen-l": (4, 256, 512, 8, 2)}
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}")
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,?!:;'\"()[]#-_/+*=<>@&%$\n"


def build_tokenizer():
    """A character-level tokenizer (one token per character; unknown ones map to ``<unk>``),
    with an end-of-text token and a chat template, made without any file or download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<|endoftext|>": 1, "<|im_start|>": 2, "<|im_end|>": 3}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_models(root: str | Path, sizes: Optional[dict] = None, seed: int = 0, vocab: int = 128,
                      ctx_max: int = 1024) -> dict[str, Path]:
    """Save random-weight Qwen2 models (``sizes``: name -> (layers, hidden, intermediate, heads,
    kv_heads); default :data:`TINY_QWEN`) and the tokenizer under ``root/<name>``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    sizes = sizes or TINY_QWEN
    tok = build_tokenizer()
    out = {}
    for name, (layers, hidden, inter, heads, kv) in sizes.items():
        d = Path(root) / name
        if not (d / "config.json").exists():
            torch.manual_seed(seed)
            cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                              num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                              max_position_embeddings=ctx_max, eos_token_id=1, pad_token_id=1,
                              bos_token_id=None, tie_word_embeddings=True)
            Qwen2ForCausalLM(cfg).save_pretrained(d)
            tok.save_pretrained(d)
        out[name] = d
    return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def transformers_cli() -> list[str]:
    """The ``transformers`` command (next to this Python, else on PATH); a clear error if absent."""
    cand = Path(sys.executable).with_name("transformers")
    if cand.exists():
        return [str(cand)]
    import shutil
    found = shutil.which("transformers")
    if not found:
        raise RuntimeError("the `transformers` command was not found (install the serve extra: "
                           "pip install -e '.[serve]', which brings transformers and accelerate)")
    return [found]


@dataclass
class EngineProcess:
    """One ``transformers serve --continuous-batching`` process serving one model directory."""

    model_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    threads: int = 1
    log_path: Optional[Path] = None
    proc: Optional[subprocess.Popen] = None
    #: KV cache of the paged-attention manager: blocks x block size tokens. Without a bound it
    #: sizes itself from the machine's free memory (about 12 GB per engine was seen on CPU).
    kv_blocks: int = 128
    block_size: int = 32
    #: tokens per iteration (prefill chunks + decodes)
    max_batch_tokens: int = 256
    extra_args: tuple = ()

    @property
    def kv_tokens(self) -> int:
        return self.kv_blocks * self.block_size

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "EngineProcess":
        if not self.port:
            self.port = free_port(self.host)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(self.threads),
               "MKL_NUM_THREADS": str(self.threads), "TOKENIZERS_PARALLELISM": "false"}
        cmd = transformers_cli() + ["serve", "--continuous-batching", "--device", "cpu", "--host", self.host,
                                    "--port", str(self.port), "--log-level", "warning",
                                    "--cb-num-blocks", str(self.kv_blocks), "--cb-block-size", str(self.block_size),
                                    "--cb-max-batch-tokens", str(self.max_batch_tokens), *self.extra_args,
                                    str(self.model_dir)]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 120.0, warmup: bool = True) -> "EngineProcess":
        """Wait for ``/health``, then (``warmup``) send one completion: the first one after start
        is slow (about 10 s on a CPU)."""
        import httpx
        t0 = time.monotonic()
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                tail = ""
                if self.log_path and Path(self.log_path).exists():
                    tail = Path(self.log_path).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"transformers serve for {self.model_dir} exited with {self.proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"transformers serve on {self.url} not healthy after {timeout:g} s")
            time.sleep(0.2)
        while warmup:
            # the first completion loads the continuous-batching manager; under CPU contention the
            # engine has been seen to drop that first connection, so it is tried again
            left = max(5.0, timeout - (time.monotonic() - t0))
            try:
                r = httpx.post(f"{self.url}/v1/completions", timeout=left,
                               json={"model": str(self.model_dir), "prompt": "warm up", "max_tokens": 2})
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError) as e:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"transformers serve for {self.model_dir} exited with {self.proc.returncode} "
                                       f"during its first completion ({type(e).__name__})") from None
                if time.monotonic() - t0 > timeout:
                    raise
                time.sleep(0.5)
                continue
            if r.status_code != 200:
                raise RuntimeError(f"warm-up completion on {self.url} answered {r.status_code}: {r.text[:300]}")
            break
        return self

    def kill(self) -> None:
        """SIGKILL the engine (a crash, for fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def start_engines(model_dirs, *, log_dir: Optional[Path] = None, threads: int = 1, timeout: float = 180.0,
                  warmup: bool = True) -> list[EngineProcess]:
    """Start one engine per model directory (all at once), wait until each is healthy and warm."""
    procs = [EngineProcess(Path(d), threads=threads,
                           log_path=(Path(log_dir) / f"engine-{Path(d).name}.log") if log_dir else None).start()
             for d in model_dirs]
    try:
        import concurrent.futures as cf
        with cf.ThreadPoolExecutor(len(procs)) as ex:
            list(ex.map(lambda p: p.wait_ready(timeout, warmup), procs))
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return procs
