#!/usr/bin/env bash
# Fetch the pinned Kafka release's jars from Maven Central into
# ${XDG_CACHE_HOME:-$HOME/.cache}/guardian/kafka-<version>/jars (CI warm-up step).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python -m stream.services fetch-kafka
