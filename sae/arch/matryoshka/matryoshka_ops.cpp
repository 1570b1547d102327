// The Matryoshka unit's kernel front-end and CPU table (see matryoshka_kernels.h).
#include "sae/arch/matryoshka/matryoshka_kernels.h"
#include <initializer_list>

#include "tensor/checks.h"

namespace sae {

const MatryoshkaKernelTable& matryoshka_cpu_kernels() {
  static const MatryoshkaKernelTable table{MATRYOSHKA_KERNELS(SAE_CPU_KERNEL)};
  return table;
}

void matryoshka_levels_(SparseFeatures& levels, const SparseFeatures& tokens, const Tensor& widths, int64_t n,
                        int64_t aux_rows) {
  const char* op = "matryoshka_levels";
  check_defined(op, widths);
  if (widths.dtype() != DType::I32 || widths.ndim() != 1 || widths.numel() < 1)
    throw Error(cat(op, ": widths must be a non-empty i32 vector, got ", widths.describe()));
  if (n < 0 || aux_rows < 0 || tokens.row_ptr.numel() < n + aux_rows + 1)
    throw Error(cat(op, ": token lists with ", tokens.row_ptr.numel(), " row offsets for ", n, " + ", aux_rows, " rows"));
  const int64_t out_rows = widths.numel() * n + aux_rows;
  if (levels.row_ptr.numel() < out_rows + 1 || levels.cols.numel() < tokens.cols.numel() ||
      levels.row_vals.numel() < tokens.row_vals.numel())
    throw Error(cat(op, ": level lists too small for ", out_rows, " rows"));
  for (const Tensor* t : std::initializer_list<const Tensor*>{&levels.row_ptr, &levels.cols, &levels.row_vals,
                                                              &tokens.row_ptr, &tokens.cols,
                                                              &tokens.row_vals})
    if (t->device() != widths.device())
      throw Error(cat(op, ": device mismatch: ", t->describe(), " vs ", widths.describe()));
  if (levels.row_vals.dtype() != tokens.row_vals.dtype())
    throw Error(cat(op, ": values ", levels.row_vals.describe(), " vs ", tokens.row_vals.describe()));
  SAE_KERNELS_FOR(widths.device(), matryoshka).matryoshka_levels(levels, tokens, widths, n, aux_rows);
}

}  // namespace sae
