# The project's image for docker-compose.yml: the pipeline, DVC, Airflow, the serving app and
# its nginx front door with mtail (Debian's packages, run with the local command lines).
# The checkout is mounted at /opt/aq at run time (editable install), so code, data, models and
# .airflow/ are the host's; the image only carries the dependencies.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends git nginx mtail \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/aq
COPY pyproject.toml requirements.lock README.md ./
COPY pipeline ./pipeline
COPY serving ./serving
# the tested versions, hash-checked (requirements.lock, `make lock`); then the project alone
RUN pip install uv==0.13.9 \
    && uv pip install --system --require-hashes -r requirements.lock \
    && pip install --no-deps -e .
