# The API/worker image for docker-compose.yml (scale-out: Postgres + Qdrant server).
FROM python:3.11-slim
ENV SCARF_NO_ANALYTICS=true DO_NOT_TRACK=true UNSTRUCTURED_DISABLE_NOTICE=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY connectors connectors
COPY indexing indexing
COPY policies policies
COPY context_server context_server
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir -c constraints.txt . \
 && pip uninstall -y torchvision || true
EXPOSE 8765
CMD ["context-server", "serve"]
