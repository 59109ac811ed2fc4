#!/bin/sh
# Installs the real third-party peers the interop tests need, when missing.
# As root it uses apt-get; otherwise it says what to install and fails.
set -eu
missing=""
command -v rsyslogd >/dev/null 2>&1 || [ -x /usr/sbin/rsyslogd ] || missing="$missing rsyslog"
ls /usr/lib/*/rsyslog/lmnsd_ossl.so >/dev/null 2>&1 || missing="$missing rsyslog-openssl"
command -v logger >/dev/null 2>&1 || missing="$missing bsdutils"
# The cluster mode's engine (DESIGN 10): JetStream, nats-server 2.9 or later.
command -v nats-server >/dev/null 2>&1 || [ -x /usr/bin/nats-server ] || missing="$missing nats-server"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing test peers:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
    echo "missing test peers:$missing -- install them (Debian: apt-get install$missing)" >&2
    exit 1
fi
