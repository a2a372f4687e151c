# syntax=docker/dockerfile:1
# labeler: one image for every role (inference worker, training worker, beat, dispatcher,
# review app).
# CPU by default (TensorFlow trains and exports, OpenVINO serves: LABELER_RUNTIME=auto);
# `--build-arg VARIANT=gpu` installs TensorFlow's CUDA wheels (the `gpu` extra), and there
# `auto` serves with TensorFlow on the GPU.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG VARIANT=cpu
WORKDIR /src
RUN python -m venv /opt/labeler
ENV PATH=/opt/labeler/bin:$PATH
COPY pyproject.toml requirements.lock README.md ./
COPY labeler ./labeler
COPY tasks ./tasks
COPY workers ./workers
COPY storage ./storage
COPY monitoring ./monitoring
COPY review ./review
# The lock pins exactly what CI tested; the gpu extra adds the CUDA libraries on top.
RUN pip install --no-cache-dir -c requirements.lock \
        "$( [ "$VARIANT" = gpu ] && echo '.[gpu]' || echo '.' )"

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN useradd --create-home --uid 10001 labeler \
    && mkdir -p /data && chown labeler:labeler /data
COPY --from=build /opt/labeler /opt/labeler
ENV PATH=/opt/labeler/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    LABELER_DATA_DIR=/data
USER labeler
WORKDIR /home/labeler
EXPOSE 9100 8300
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LABELER_METRICS_PORT', '9100') + '/healthz', timeout=4)"
ENTRYPOINT ["labeler"]
CMD ["--help"]
