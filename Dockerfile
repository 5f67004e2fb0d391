# mxd in one container: all state in the /var/lib/mxd volume.
#
#   docker build -t mxd .
#   docker run -d --name mxd --stop-timeout 60 \
#     -e MXD_HOSTNAME=mail.example.com \
#     -p 25:25 -p 587:587 -p 8025:8025 -v mxd:/var/lib/mxd mxd
#   docker exec -it mxd mxd init        # prints the DNS records to publish
#
# mxd runs as the unprivileged user mxd (uid 999). To bind 25/465/587 it needs
# CAP_NET_BIND_SERVICE, given to the interpreter as a file capability: that
# keeps the daemon off root without a port-remapping step, and the container
# has one job, so "any python in it may bind low ports" grants nothing more.
# It needs NET_BIND_SERVICE in the container's bounding set (Docker's default;
# with --cap-drop=ALL add --cap-add=NET_BIND_SERVICE).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && setcap cap_net_bind_service=+ep "$(readlink -f /usr/local/bin/python3)" \
 && apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 999 --user-group --home-dir /var/lib/mxd --no-create-home \
        --shell /usr/sbin/nologin mxd \
 && install -d -o mxd -g mxd -m 0700 /var/lib/mxd

COPY . /src
RUN pip install --no-cache-dir /src

ENV MXD_DATA_DIR=/var/lib/mxd \
    MXD_HTTP_LISTEN=0.0.0.0:8025

# Declared after the chown above, so a new named volume starts owned by mxd.
VOLUME /var/lib/mxd
WORKDIR /var/lib/mxd
EXPOSE 25 587 465 8025
USER 999:999

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8025/api/health', timeout=4)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["mxd"]
CMD ["serve"]
