#!/usr/bin/env bash
# Start a throwaway redis-server on a free loopback port (no persistence) until Ctrl-C;
# prints its URL. Installs Debian's redis-server when missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v redis-server >/dev/null; then
  apt-get install -y redis-server
fi
exec python -m stream.services redis "$@"
