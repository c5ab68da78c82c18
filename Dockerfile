# S2 Pro Playground (playground + OpenAI-compatible speech API) on a CUDA machine or a GPU Docker Space.
#   docker build -t s2pro-playground .
#   docker run --gpus all -p 7860:7860 -v s2pro-data:/data s2pro-playground
# The weights (fishaudio/s2-pro) download on the first start into /data/huggingface; without a GPU or
# without weights the server still starts (CPU, or the bannered demo mode).
FROM python:3.11-slim

# ffmpeg: Gradio probes and converts browser recordings with it (PyAV and soundfile wheels bring their own libs).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

# Hugging Face Docker Spaces run the container as uid 1000.
RUN useradd --create-home --uid 1000 user
WORKDIR /home/user/app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# The PyPI torch wheel for Linux x86_64 is the CUDA build (CUDA runtime as pip packages; the driver comes
# from the host through the NVIDIA container runtime). First and alone: the largest, least changing layer.
# 2.11: the release the CUDA kernels are tested on (scripts/setup_env.sh pins the same range).
ARG TORCH_VERSION=2.11.0
RUN pip install "torch==${TORCH_VERSION}"
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY --chown=user app.py ./
COPY --chown=user engine engine
COPY --chown=user playground playground
COPY --chown=user assets assets

# /data holds voices, history, rendered downloads and the weights: mount a volume (or attach a Space's
# persistent storage, which appears at /data) to keep them across restarts.
RUN mkdir -p /data && chown user /data
ENV S2PRO_DATA_DIR=/data HF_HOME=/data/huggingface GRADIO_SERVER_NAME=0.0.0.0 PORT=7860
USER user
EXPOSE 7860
HEALTHCHECK --start-period=900s --interval=30s --timeout=5s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${PORT}/health')"
CMD ["python", "app.py", "--host", "0.0.0.0"]
