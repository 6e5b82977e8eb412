#!/usr/bin/env bash
# Start a local single-node Apache Kafka (KRaft) broker on a free loopback port and keep it
# running until Ctrl-C; prints the bootstrap address. Jars of the pinned release come from
# Maven Central via Maven on first use (see stream/services.py: the tests and
# `guardian demo` use the same code). Needs java 17 and mvn.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python -m stream.services kafka "$@"
