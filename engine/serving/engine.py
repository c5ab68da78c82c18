"""Engine: the synchronous serving core. add_request / step / abort.

A request becomes a Job: its text is split into chunks, and each chunk is one Sequence (prompt =
system + references + earlier chunks as user/assistant turns + this chunk). `step()` asks the scheduler
for a plan, runs prefill and one batched decode frame on the runner, turns new frames into PCM with
one batched streaming-vocoder call (audio_streams.py), and returns Events. Only `runner.py` touches model tensors.
Admission: beyond `EngineConfig.waiting_limit` queued requests, add_request raises EngineBusy.
"""
from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from engine.ar.runner import ModelRunner, RunnerConfig
from engine.backend import resolve_backend
from engine.loader import LoadedModel
from engine.params import RequestError, SamplingParams
from engine.prompt import Reference, build_prompt, dialogue_text, split_text
from engine.serving.admission import EngineBusy, QueueRate, retry_after_s
from engine.serving.engine_config import EngineConfig
from engine.serving.kv_cache import BlockManager
from engine.serving.memory_plan import MemoryPlan, block_bytes, cap_device_memory, device_bytes, kv_blocks
from engine.serving.metrics import EngineMetrics, RequestTimes
from engine.serving.request import ChunkDone, Sequence, Status, SynthesisRequest, new_request_id, now
from engine.serving.scheduler import Scheduler
from engine.vocoder.streams import AudioStreams

log = logging.getLogger(__name__)
# Reference encodings kept by content: a few dozen voices in use at once, each [10, N] codes of a few KB.
VOICE_CACHE_ENTRIES = 64


@dataclass
class Event:
    """What one step produced for one request: new frames' codes and/or PCM, or its end."""

    request_id: int
    codes: np.ndarray | None = None  # [10, n] int64
    pcm: np.ndarray | None = None  # float32 mono at the codec sample rate
    finished: bool = False
    reason: str | None = None  # eos | length | aborted | error | unhealthy (the watchdog fired)
    error: str | None = None
    chunk_index: int = 0
    stats: dict[str, float | int | None] | None = None  # final figures, on the finishing event
    chunk_done: ChunkDone | None = None  # the text chunk that ended with this event


@dataclass
class _Launched:
    """A queued decode frame: its sequences and where its [B, 11] output lands."""

    seqs: list[Sequence]
    out: Tensor
    done: torch.cuda.Event | None = None
    first_audio: bool = False  # holds the first frame of a streaming request

    def rows(self) -> np.ndarray:
        if self.done is not None:
            self.done.synchronize()
            return self.out.numpy().copy()
        return self.out.cpu().numpy()


@dataclass
class Job:
    request_id: int
    chunks: list[str]
    references: list[Reference]
    params: SamplingParams
    frames_left: int
    times: RequestTimes
    fixed_prompt: Tensor | None = None  # add_prompt(): a ready grid, one chunk
    chunk_index: int = 0
    history: list[tuple[str, Tensor]] = field(default_factory=list)
    seq: Sequence | None = None
    frames_done: int = 0
    chunk_start: int = 0  # the frame the current text chunk starts at


class Engine:
    def __init__(self, loaded: LoadedModel, cfg: EngineConfig) -> None:
        self.loaded, self.cfg = loaded, cfg
        self.backend = resolve_backend(loaded.device, cfg.fused_kernels, cfg.compile, cfg.cuda_graphs)
        if cfg.gpu_memory_bytes is not None:
            if loaded.device.type != "cuda":
                raise ValueError("--gpu-memory caps a GPU's memory; this engine runs on the CPU")
            cap_device_memory(loaded.device, cfg.gpu_memory_bytes)
        weights = device_bytes(loaded.device)
        # The vocoder before the KV pool, which is sized from the memory it leaves (memory_plan.py).
        # One row per decoding stream is enough (see vocoder/streams.py).
        self.streams = AudioStreams(loaded.codec, cfg.max_batch, cfg.vocoder_group_frames,
                                    cfg.overlap_vocoder, fused=self.backend.fused_codec,
                                    push_rows=cfg.vocoder_push_rows, device_streams=self.backend.device_streams)
        if self.backend.cuda_graphs:
            self.streams.warm_up()
        vocoder = device_bytes(loaded.device) - weights
        num_blocks = cfg.num_blocks or kv_blocks(loaded, cfg.block_size, cfg.gpu_memory_fraction, cfg.cpu_kv_mb,
                                                 cfg.gpu_memory_bytes)
        self.runner = ModelRunner(loaded.model, RunnerConfig(num_blocks, cfg.block_size, cfg.max_batch,
                                                             loaded.config.text.max_seq_len),
                                  self.backend)
        self.blocks = BlockManager(num_blocks, cfg.block_size)
        self.scheduler = Scheduler(self.blocks, cfg.max_batch, cfg.prefill_budget, cfg.burst_hold_tokens,
                                   cfg.decode_prefill_budget)
        before_graphs = device_bytes(loaded.device)
        self._capture_graphs()
        one_block = block_bytes(loaded.config, loaded.dtype, cfg.block_size)
        self.memory = MemoryPlan(weights, vocoder, device_bytes(loaded.device) - before_graphs, num_blocks,
                                 one_block, cfg.block_size, cfg.max_batch,
                                 tuple(cfg.graph_buckets()) if self.backend.cuda_graphs else ())
        if self.backend.device_streams:
            log.info(self.memory.describe())
        self.run_ahead = self.backend.device_streams if cfg.run_ahead is None else cfg.run_ahead
        self.inflight: _Launched | None = None  # run-ahead: the frame queued last step, not yet read
        self._host_out: list[Tensor] = []  # pinned buffers the frame outputs are copied to (CUDA)
        if self.backend.device_streams:
            self._host_out = [torch.empty((cfg.max_batch, loaded.config.num_codebooks + 1), dtype=torch.long,
                                          pin_memory=True) for _ in range(2)]
        self._launches = 0
        self.jobs: dict[int, Job] = {}
        self.pending: list[Event] = []
        self.metrics = EngineMetrics()
        self._voice_cache: OrderedDict[str, Tensor] = OrderedDict()
        self.queue_rate = QueueRate()
        self.steps = 0
        self.phase = "idle"  # what the current step is doing, for the watchdog's report
        # Test and fault-injection hook: each is called with the engine at the start of every step,
        # on the device thread; one that blocks makes the step hang (how the watchdog is tested).
        self.step_hooks: list[Callable[[Engine], None]] = []

    def _capture_graphs(self) -> None:
        cfg = self.cfg
        self.graphs = None
        if self.backend.cuda_graphs:
            from engine.ar.frame_graphs import FrameGraphs
            self.graphs = FrameGraphs(self.runner, cfg.graph_buckets(), compile=self.backend.ar_frame == "compiled")
            if self.runner.fused and cfg.prefill_graph_tokens:
                from engine.ar.prefill_graphs import PrefillGraphs
                self.runner.prefill_graphs = PrefillGraphs(self.runner, cfg.prefill_graph_tokens)

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, req: SynthesisRequest) -> int:
        """Validate and queue a request. Raises ValueError with a user-facing message on bad input
        (also for a request the KV pool or the model's context can never hold), EngineBusy when the
        waiting queue is full."""
        self.check_room()
        refs = [Reference(r.text, self._reference_codes(r)) for r in req.references]
        chunks = split_text(req.text, req.chunk_length) if req.chunk_length else [dialogue_text(req.text).strip()]
        if not chunks:
            raise RequestError("text", "text has nothing to speak (only tags?)")
        job = Job(new_request_id(), chunks, refs, req.sampling, req.max_frames, RequestTimes(now()))
        return self._queue(job, req.stream_pcm)

    def add_prompt(self, prompt: Tensor, params: SamplingParams, max_frames: int,
                   stream_pcm: bool = False) -> int:
        """Queue a ready prompt grid [11, T] (one chunk): for benchmarks and reference comparisons."""
        self.check_room()
        job = Job(new_request_id(), [""], [], params, max_frames, RequestTimes(now()), fixed_prompt=prompt)
        return self._queue(job, stream_pcm)

    def _queue(self, job: Job, stream_pcm: bool) -> int:
        self._start_chunk(job)  # builds and checks the first prompt; raises before anything is kept
        if stream_pcm:
            self.streams.open(job.request_id)
        return job.request_id

    def waiting_beyond_slots(self) -> int:
        """Queued sequences that will not start at the next step (more than the free decode slots)."""
        return max(0, len(self.scheduler.waiting) - len(self.scheduler.free_slots))

    def check_room(self) -> None:
        """Raise EngineBusy when a new request would wait beyond the queue's limit."""
        waiting, limit = self.waiting_beyond_slots(), self.cfg.waiting_limit
        if waiting >= limit:
            raise EngineBusy(retry_after_s(self.queue_rate, waiting, limit), waiting + 1, waiting, limit)

    def _reference_codes(self, ref) -> Tensor:
        if ref.codes is not None:
            return torch.tensor(ref.codes, dtype=torch.long)
        samples = np.asarray(ref.samples, dtype=np.float32)
        seconds = len(samples) / self.loaded.sample_rate
        if seconds > self.cfg.max_reference_seconds:
            raise RequestError("references", f"reference audio is {seconds:.1f} s long; the limit is "
                             f"{self.cfg.max_reference_seconds:.0f} s: trim it to its best part")
        if len(samples) == 0:
            raise RequestError("references", "reference audio is empty")
        return self.encode_audio(samples)

    def encode_audio(self, samples: np.ndarray) -> Tensor:
        """Codec codes [10, N] for mono 44.1 kHz samples, cached by content."""
        key = hashlib.sha256(samples.tobytes()).hexdigest()
        if key not in self._voice_cache:
            audio = torch.from_numpy(samples).to(self.loaded.device)[None, None]
            self._voice_cache[key] = self.loaded.codec.encode(audio)[0].cpu()
            if len(self._voice_cache) > VOICE_CACHE_ENTRIES:
                self._voice_cache.popitem(last=False)
        self._voice_cache.move_to_end(key)
        return self._voice_cache[key]

    def _start_chunk(self, job: Job) -> None:
        if job.fixed_prompt is not None:
            grid = job.fixed_prompt
        else:
            grid = build_prompt(self.loaded.tokenizer, job.chunks[job.chunk_index], job.references,
                                job.history)
        columns = [tuple(c) for c in grid.T.tolist()]
        seq = Sequence(job.request_id, columns, job.frames_left, job.frames_done)
        if seq.total_tokens > self.runner.cfg.max_model_len:
            raise RequestError(None, f"request needs {seq.total_tokens} tokens ({seq.prompt_len} of prompt + "
                             f"{seq.max_new_frames} frames); the model's context holds "
                             f"{self.runner.cfg.max_model_len}: lower max_frames or shorten the text")
        self.scheduler.add(seq, front=job.chunk_index > 0)
        job.seq = seq
        self.jobs[job.request_id] = job

    def abort(self, request_id: int) -> None:
        job = self.jobs.pop(request_id, None)
        if job is None:
            return
        assert job.seq is not None  # a queued job always has its current text chunk's sequence
        self.scheduler.finish(job.seq)
        self.streams.close(request_id)
        self.metrics.finished("aborted")
        self.pending.append(Event(request_id, finished=True, reason="aborted"))

    def text_chunks(self, request_id: int) -> list[str]:
        """The text chunks a queued request is spoken in, in order."""
        return list(self.jobs[request_id].chunks)

    def has_work(self) -> bool:
        return (bool(self.pending) or self.scheduler.has_work() or self.inflight is not None
                or self.streams.busy())

    def queue_position(self, request_id: int) -> int:
        return self.scheduler.queue_position(request_id)

    # -- stepping ---------------------------------------------------------------------------
    def step(self) -> list[Event]:
        """Prefill what the scheduler planned, queue one decode frame for the running sequences,
        decode due audio, and turn the last frame's tokens into events. With run-ahead the frame
        read here is the one queued by the previous step (the device already works on the next)."""
        self.steps += 1
        for hook in self.step_hooks:
            self.phase = "step hook"
            hook(self)
        events, self.pending = self.pending, []
        if self.inflight is not None and self.inflight.first_audio:
            # A stream's first frame is in flight: read it and decode its audio before queueing the
            # next frame (overlapped, the codec's kernels would wait behind the AR frame's).
            ready, self.inflight = self.inflight, None
            self.phase = "read first frame"
            events += self._advance(ready.seqs, ready.rows())
        self.phase = "schedule"
        admitted = self.scheduler.admitted
        plan = self.scheduler.schedule()
        self.queue_rate.departed(self.scheduler.admitted - admitted)
        if plan.prefill:
            self.phase = "prefill"
            self.runner.prefill(plan.prefill)
            for seq, start, n in plan.prefill:
                seq.num_computed = start + n
                if not seq.in_prefill:
                    self.scheduler.publish_prompt(seq)
        # A sequence whose frame budget is already covered by in-flight frames waits for them.
        decode = [s for s in plan.decode if len(s.frames) + s.inflight < s.max_new_frames]
        launched = None
        if decode:
            self.phase = "launch frame"
            for seq in decode:
                if not seq.started:
                    self.runner.start_sequence(seq.slot, self.jobs[seq.request_id].params)
                    seq.started = True
            launched = self._launch_frame(decode)
        # Audio of earlier frames is decoded while the GPU runs this frame (a second CUDA stream).
        self.phase = "vocoder"
        events += self._vocode(flush=set())
        if self.run_ahead:
            ready, self.inflight = self.inflight, launched
        else:
            ready = launched
        if ready is not None:
            self.phase = "read frame"
            events += self._advance(ready.seqs, ready.rows())
        self.metrics.step(len(decode), self.blocks)
        self.phase = "idle"
        return events

    def _launch_frame(self, seqs: list[Sequence]) -> _Launched:
        """Queue one decode frame on the device; its [B, 11] output is read later (_Launched.rows)."""
        offsets = [s.frame_offset + len(s.frames) + s.inflight for s in seqs]
        if self.graphs is not None and len(seqs) <= self.graphs.max_batch:
            out = self.graphs.launch(seqs, offsets)
        else:
            out = self.runner.decode_frame(self.runner.frame_inputs(seqs, offsets, len(seqs)))
        first_audio = any(not s.frames and not s.inflight and s.request_id in self.streams.streams for s in seqs)
        for s in seqs:
            s.inflight += 1
        if not self._host_out:
            return _Launched(seqs, out, first_audio=first_audio)
        # Copy to pinned memory behind the frame: reading it later waits for this frame only, not
        # for the frame queued after it (a graph's output buffer is overwritten by its next replay).
        host = self._host_out[self._launches % 2][:len(seqs)]
        self._launches += 1
        host.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return _Launched(seqs, host, done, first_audio)

    def _vocode(self, flush: set[int]) -> list[Event]:
        events = []
        for rid, pcm in self.streams.decode(flush):
            self.jobs[rid].times.audio(now())
            events.append(Event(rid, pcm=pcm, chunk_index=self.jobs[rid].chunk_index))
        return events

    def _advance(self, seqs: list[Sequence], rows: np.ndarray) -> list[Event]:
        events, ended = [], []
        eos_col = self.loaded.config.codebook_size
        sem_start = self.loaded.config.semantic_start_token_id
        for seq, row in zip(seqs, rows):
            seq.inflight -= 1
            if seq.status is not Status.RUNNING:
                continue  # ended (or was aborted) after this frame was queued: its row is void
            job = self.jobs[seq.request_id]
            if int(row[0]) == eos_col:
                ended.append((job, "eos"))
                continue
            seq.frames.append((sem_start + int(row[0]), *(int(c) for c in row[1:])))
            job.frames_left -= 1
            job.frames_done += 1
            job.times.frame(now())
            codes = np.asarray(row[1:], dtype=np.int64)
            self.streams.add(job.request_id, codes)
            events.append(Event(job.request_id, codes=codes[:, None], chunk_index=job.chunk_index))
            if len(seq.frames) >= seq.max_new_frames:
                ended.append((job, "length"))
        # A stream's first frame is decoded at once (time to first audio), and so is everything of a
        # stream whose chunk ended; the rest waits for the next step, overlapping the next frame.
        events += self._vocode(flush={job.request_id for job, _ in ended} | self.streams.starting())
        for job, reason in ended:
            events += self._end_chunk(job, reason)
        return events

    def _end_chunk(self, job: Job, reason: str) -> list[Event]:
        seq = job.seq
        assert seq is not None
        self.scheduler.finish(seq)
        codes = torch.tensor([f[1:] for f in seq.frames], dtype=torch.long).T.reshape(10, -1)
        if codes.shape[1]:
            job.history.append((job.chunks[job.chunk_index], codes))
        done = ChunkDone(job.chunk_index, job.chunks[job.chunk_index], job.chunk_start, job.frames_done)
        more = job.chunk_index + 1 < len(job.chunks)
        if more and reason == "eos" and job.frames_left > 0:
            job.chunk_index += 1
            job.chunk_start = job.frames_done
            try:
                self._start_chunk(job)
                return [Event(job.request_id, chunk_index=done.index, chunk_done=done)]
            except ValueError as exc:  # e.g. the history outgrew the prompt limit
                return [Event(job.request_id, chunk_index=done.index, chunk_done=done),
                        self._finish(job, "error", str(exc))]
        return [self._finish(job, "length" if more else reason, chunk_done=done)]

    def _finish(self, job: Job, reason: str, error: str | None = None,
                chunk_done: ChunkDone | None = None) -> Event:
        del self.jobs[job.request_id]
        self.streams.close(job.request_id)
        job.times.done(now())
        self.metrics.finished(reason, job.times, job.frames_done)
        t = job.times
        stats = {"frames": t.frames, "audio_seconds": t.audio_seconds, "ttft_ms": t.ttft_ms,
                 "ttfb_ms": t.ttfb_ms, "rtf": t.rtf, "frames_per_second": t.frames_per_second,
                 "chunks": job.chunk_index + 1}
        return Event(job.request_id, finished=True, reason=reason, error=error,
                     chunk_index=job.chunk_index, stats=stats, chunk_done=chunk_done)
