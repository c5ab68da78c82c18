/* S2 Pro Playground: gap-free streaming playback of a generation's raw PCM.
 *
 * One file, two roles. Loaded by the page (<script>) it defines window.s2Player, which fetches
 * /playground/stream/<id> (audio/pcm, int16 LE, 44.1 kHz mono) and hands the samples to an
 * AudioWorklet. Loaded by audioWorklet.addModule() (the same URL) it registers that worklet: a FIFO of
 * float samples that starts after a short pre-roll, outputs silence on underrun, and counts what it
 * received and played. The AudioContext runs at 44.1 kHz, so the browser resamples to the device.
 */
(() => {
  "use strict";

  const PROCESSOR = "s2-pcm-fifo";

  if (typeof AudioWorkletGlobalScope !== "undefined" && typeof registerProcessor === "function") {
    // Pre-roll ~93 ms (two 2048-sample frames): absorbs network/engine jitter without delaying the start much.
    const PREROLL_SAMPLES = 4096;
    const REPORT_EVERY = 32; // render quanta (~93 ms) between "played" reports

    class PcmFifo extends AudioWorkletProcessor {
      constructor() {
        super();
        this.reset();
        this.port.onmessage = (e) => this.onMessage(e.data);
      }

      reset() {
        this.queue = [];
        this.offset = 0; // read position in queue[0]
        this.buffered = 0;
        this.received = 0;
        this.played = 0;
        this.underruns = 0;
        this.playing = false;
        this.ended = false;
        this.drainedSent = false;
        this.quanta = 0;
      }

      onMessage(msg) {
        if (msg.type === "push") {
          this.queue.push(msg.samples);
          this.buffered += msg.samples.length;
          this.received += msg.samples.length;
          this.report();
        } else if (msg.type === "end") {
          this.ended = true;
        } else if (msg.type === "reset") {
          this.reset();
          this.report();
        }
      }

      report() {
        this.port.postMessage({ type: "counts", received: this.received, played: this.played,
                                underruns: this.underruns, buffered: this.buffered, playing: this.playing });
      }

      process(inputs, outputs) {
        const out = outputs[0][0];
        if (!this.playing && (this.buffered >= PREROLL_SAMPLES || (this.ended && this.buffered > 0))) {
          this.playing = true;
        }
        let written = 0;
        if (this.playing) written = this.drain(out);
        out.fill(0, written); // silence on underrun or while pre-rolling
        if (this.playing && written < out.length) {
          this.playing = false;
          if (!this.ended) this.underruns += 1; // starved mid-stream: re-buffer before resuming
        }
        if (this.ended && this.buffered === 0 && !this.drainedSent && this.received > 0) {
          this.drainedSent = true;
          this.report();
          this.port.postMessage({ type: "drained" });
        }
        if (++this.quanta % REPORT_EVERY === 0) this.report();
        return true;
      }

      drain(out) {
        let written = 0;
        while (written < out.length && this.queue.length) {
          const head = this.queue[0];
          const n = Math.min(out.length - written, head.length - this.offset);
          out.set(head.subarray(this.offset, this.offset + n), written);
          written += n;
          this.offset += n;
          if (this.offset === head.length) {
            this.queue.shift();
            this.offset = 0;
          }
        }
        this.buffered -= written;
        this.played += written;
        return written;
      }
    }

    registerProcessor(PROCESSOR, PcmFifo);
    return;
  }

  const SAMPLE_RATE = 44100;
  const SCRIPT_URL = document.currentScript ? document.currentScript.src : "/playground/static/player.js";

  class S2Player {
    constructor() {
      this.ctx = null;
      this.node = null;
      this.nodeReady = null;
      this.controller = null;
      this.resetCounts(null);
    }

    resetCounts(genId) {
      this.genId = genId;
      this.state = genId ? "connecting" : "idle";
      this.samplesReceived = 0; // acknowledged by the worklet
      this.samplesPlayed = 0;
      this.chunksReceived = 0; // network reads that carried audio
      this.underruns = 0;
      this.startedAt = genId ? performance.now() : null;
      this.firstAudioAt = null; // performance.now() when the first samples reached the worklet
      this.error = null;
    }

    /** A fresh generation id (128 random bits, hex); works outside secure contexts too. */
    newId() {
      const bytes = crypto.getRandomValues(new Uint8Array(16));
      return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    }

    /** Start playing generation `genId`; safe to call before the server has opened it. */
    start(genId) {
      this.stop();
      this.resetCounts(genId);
      this.controller = new AbortController();
      this.ensureNode();
      this.pump(genId, this.controller.signal).catch((err) => {
        if (err.name === "AbortError" || this.genId !== genId) return;
        this.state = "error";
        this.error = String(err);
        this.render();
      });
      this.render();
      return genId;
    }

    /** Stop playback at once (the Stop button; a new generation). */
    stop() {
      if (this.controller) this.controller.abort();
      this.controller = null;
      if (this.node) this.node.port.postMessage({ type: "reset" });
      if (this.genId && this.state !== "done") this.state = "stopped";
      this.render();
    }

    ensureNode() {
      if (this.nodeReady) {
        this.ctx.resume();
        return this.nodeReady;
      }
      this.ctx = new AudioContext({ sampleRate: SAMPLE_RATE, latencyHint: "interactive" });
      this.nodeReady = this.ctx.audioWorklet.addModule(SCRIPT_URL).then(() => {
        this.node = new AudioWorkletNode(this.ctx, PROCESSOR, { numberOfInputs: 0, outputChannelCount: [1] });
        this.node.port.onmessage = (e) => this.onWorklet(e.data);
        this.node.connect(this.ctx.destination);
        return this.node;
      });
      this.ctx.resume();
      return this.nodeReady;
    }

    onWorklet(msg) {
      if (!this.genId) return;
      if (msg.type === "counts") {
        if (msg.received > 0 && this.firstAudioAt === null) this.firstAudioAt = performance.now();
        this.samplesReceived = msg.received;
        this.samplesPlayed = msg.played;
        this.underruns = msg.underruns;
        if (this.state === "buffering" || this.state === "playing") {
          this.state = msg.playing ? "playing" : "buffering";
        }
      } else if (msg.type === "drained" && this.state !== "stopped") {
        this.state = "done";
      }
      this.render();
    }

    async pump(genId, signal) {
      const resp = await fetch(new URL(`playground/stream/${genId}`, document.baseURI), { signal, cache: "no-store" });
      if (!resp.ok) throw new Error(`stream ${resp.status}`);
      const node = await this.nodeReady;
      const reader = resp.body.getReader();
      let carry = null; // a byte left over when a read ends mid-sample
      this.state = "buffering";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        let bytes = value;
        if (carry !== null) {
          bytes = new Uint8Array(value.length + 1);
          bytes[0] = carry;
          bytes.set(value, 1);
          carry = null;
        }
        if (bytes.length % 2) carry = bytes[bytes.length - 1];
        const count = bytes.length >> 1;
        if (!count) continue;
        const ints = new Int16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + count * 2));
        const samples = new Float32Array(count);
        for (let i = 0; i < count; i++) samples[i] = ints[i] / 32768;
        node.port.postMessage({ type: "push", samples }, [samples.buffer]);
        this.chunksReceived += 1;
      }
      node.port.postMessage({ type: "end" });
      if (!this.chunksReceived && this.genId === genId) {
        this.state = "empty"; // the take failed or was refused before any audio
        this.render();
      }
    }

    /** The small live line under the figures (#s2-live), when the page has one. */
    render() {
      const el = document.getElementById("s2-live");
      if (!el) return;
      const secs = (n) => (n / SAMPLE_RATE).toFixed(1);
      const first = this.firstAudioAt === null ? "" : ` · first audio after ${Math.round(this.firstAudioAt - this.startedAt)} ms`;
      const text = {
        idle: "Live playback: ready",
        connecting: "Live playback: connecting…",
        buffering: `Live playback: buffering · ${secs(this.samplesReceived)} s received${first}`,
        playing: `Live playback: playing ${secs(this.samplesPlayed)} / ${secs(this.samplesReceived)} s${first}`,
        done: `Live playback: played ${secs(this.samplesPlayed)} s${first}`,
        stopped: "Live playback: stopped",
        empty: "Live playback: no audio for this take",
        error: `Live playback unavailable (${this.error}); the finished clip appears below`,
      }[this.state];
      el.textContent = text + (this.underruns ? ` · ${this.underruns} underrun(s)` : "");
      el.dataset.state = this.state;
    }
  }

  window.s2Player = new S2Player();
})();
