# The genaug image used by cluster/kuberay/*.yaml (and optionally by ray_cluster.yaml's docker.image):
#   docker build -t genaug:latest .
#   docker tag genaug:latest REGISTRY/genaug:TAG && docker push REGISTRY/genaug:TAG   # then use that name
# Ray and Python match the versions genaug pins (ray 2.60, Python 3.11); torch comes from PyPI (CUDA build).
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/genaug
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users models models
COPY --chown=ray:users jobs jobs
COPY --chown=ray:users cluster cluster
RUN pip install --no-cache-dir -e .

ENV GENAUG_HOME=/mnt/genaug
