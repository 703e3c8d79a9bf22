# The Triton model repository as an image: the init container of deploy/k8s/triton.yaml copies its /models into
# Triton's repository volume. The build context is a folder holding the artifacts of the versions to serve
# (`make model-artifact VERSION=N`, all exported with the same config) and of the image model that decodes
# photos in Triton (image_embedder-1.tar.gz, written by the same command), for example:
#   make model-artifact VERSION=1 && make model-artifact VERSION=2
#   docker build -f deploy/docker/model-repository.Dockerfile -t registry.example.com/recsys/model-repository:2 \
#       build/artifacts
# Tag it with the newest version it carries; ADD unpacks each tarball into /models, versions side by side.
ARG BASE_IMAGE=busybox:1.37
FROM ${BASE_IMAGE}
ADD product_embedder-*.tar.gz /models/
ADD image_embedder-*.tar.gz /models/
USER 1000:1000
