# Stand-in for python:3.13-slim, built on the debootstrap'ed Debian trixie
# (whose python3 is 3.13). Used only when python:3.13-slim cannot be pulled.
ARG BASE_IMAGE=bottle-local/debian:trixie
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
ENV LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -c 'import sys, venv, ssl; assert sys.version_info[:2] == (3, 13), sys.version'
CMD ["python3"]
