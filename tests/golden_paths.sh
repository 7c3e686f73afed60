# The kernel paths every golden case runs on, sourced by tests/t_golden_*.sh:
#   default                        as moet runs (OpenBLAS's AVX-512 kernels where the CPU has
#                                  them, moet's own kernels where model/gemm.c picks them)
#   MOET_BLAS=keep MOET_ISA=avx2   what an AVX2-only CPU runs: OpenBLAS as configured
#                                  (OPENBLAS_CORETYPE), moet's AVX2 kernels
#   MOET_GEMM=blas                 OpenBLAS for every product (the fallback)
#   MOET_GEMM=own MOET_HEAD_VB=7 MOET_HEAD_ROWS=5
#                                  moet's kernels for every product, threaded ones included;
#                                  a frozen lm_head (LoRA, eval) in blocks of 7 vocabulary rows
#                                  and passes of 5 token rows, so its online softmax rescales
#                                  and loops over passes (model/forward.c head_frozen)
# golden_run SCRIPT CASE WORK: runs SCRIPT (a golden_*.py) on CASE once per path.
GOLDEN_PATHS=("" "MOET_BLAS=keep MOET_ISA=avx2" "MOET_GEMM=blas" "MOET_GEMM=own MOET_HEAD_VB=7 MOET_HEAD_ROWS=5")
golden_run() {
    local script=$1 case=$2 work=$3 i=0
    for p in "${GOLDEN_PATHS[@]}"; do
        mkdir -p "$work/path$i"
        echo "== $(basename "$case") on ${p:-the default path}"
        env $p "$PY" "$(dirname "${BASH_SOURCE[0]}")/$script" "$MOET" "$case" "$work/path$i"
        i=$((i + 1))
    done
}
