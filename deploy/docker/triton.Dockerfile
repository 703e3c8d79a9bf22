# Triton as deploy/k8s/triton.yaml and deploy/compose run it: the NGC release of deploy/triton/ngc-support-matrix.json
# with what the image model (image_embedder: photos decoded in Triton, IMAGE_PREPROCESSING=triton) imports in the
# python backend, numpy and Pillow at the versions of requirements.lock, so that a photo decodes in Triton to the
# same pixels as in the gateway. Tag it with the release it is built on:
#   docker build -f deploy/docker/triton.Dockerfile -t registry.example.com/recsys/triton:25.12-py3 deploy/docker
ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:25.12-py3
FROM ${BASE_IMAGE}
# The image's Python is the distribution's, marked externally managed; this image is Triton's alone.
RUN python3 -m pip install --no-cache-dir --break-system-packages numpy==1.26.4 pillow==13.0.0
