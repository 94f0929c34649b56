#!/usr/bin/env bash
# Compares exp's seed-cnn gradient with PyTorch's on the 10,000 MNIST test images (see
# scripts/bench/gradcheck_pytorch.py). Needs Debian's python3-torch (scripts/bench/bench-cpu.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
project=$PWD
export EXP_DATA="${EXP_DATA:-$HOME/.cache/exp/data}"
cargo build --release >&2
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
git init -q -b main "$work/repo"
git -C "$work/repo" config user.name gradcheck; git -C "$work/repo" config user.email gradcheck@localhost
"$project/target/release/exp" init "$work/repo" >/dev/null
cat > "$work/repo/experiments/gradcheck.toml" <<'SPEC'
# One SGD step over all 10,000 test images: W0 - W1 is the gradient when lr = 1.
[model]
name = "seed-cnn"
[data]
format = "idx"
train_images = "mnist/t10k-images-idx3-ubyte.gz"
train_labels = "mnist/t10k-labels-idx1-ubyte.gz"
test_images = "mnist/t10k-images-idx3-ubyte.gz"
test_labels = "mnist/t10k-labels-idx1-ubyte.gz"
test_limit = 100
normalize = { mean = [0.1307], std = [0.3081] }
[train]
optimizer = "sgd"
batch_size = 10000
epochs = 1
SPEC
cd "$work/repo"
git switch -q -c feature/gradcheck
git add experiments/gradcheck.toml && git commit -q -m "gradcheck spec"
"$project/target/release/exp" run gradcheck --quiet --set train.lr=1e-30 >/dev/null   # lr·g underflows: W0
cp experiments/gradcheck/model.safetensors "$work/w0.safetensors"
"$project/target/release/exp" run gradcheck --quiet --set train.lr=1.0 >/dev/null     # W1 = W0 - g
/usr/bin/python3 "$project/scripts/bench/gradcheck_pytorch.py" "$work/w0.safetensors" experiments/gradcheck/model.safetensors "$EXP_DATA"
