#!/usr/bin/env bash
# Regenerate daojia_msg/protocol/pb/msgplatform_pb2.py(i) from proto/.
# The generator is pinned (tools/requirements-genproto.txt): its protoc must be
# no newer than the protobuf runtime that setup.cfg allows, or the generated
# module refuses to import.
# Usage: tools/genproto.sh [OUTDIR]   (default: the package's pb/ folder)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/daojia_msg/protocol/pb}
py=${PYTHON:-python3}
if ! "$py" -c 'import grpc_tools' 2>/dev/null; then
  echo "genproto: install the pinned generator first: pip install -r tools/requirements-genproto.txt" >&2
  exit 2
fi
mkdir -p "$out"
"$py" -m grpc_tools.protoc -I "$here/proto" --python_out="$out" --pyi_out="$out" "$here/proto/msgplatform.proto"
