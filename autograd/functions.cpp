// Gradient formulas of the differentiable ops (see functions.h). Each lambda captures the tensors
// it needs by value (shared storage, no copies).
#include "autograd/functions.h"

#include "tensor/ops.h"

namespace sae::ag {

namespace {
using Grads = std::vector<Tensor>;
using Needs = std::vector<bool>;

// x broadcast up to `shape` (the gradient of a reduction).
Tensor expand(const Tensor& x, const Shape& shape) {
  Tensor out = Tensor::zeros(shape, x.dtype(), x.device());
  add_(out, x);
  return out;
}

// Shape of x with `axis` kept as size 1.
Shape keepdim_shape(const Shape& x, int axis) {
  Shape s = x;
  s[axis < 0 ? axis + x.ndim : axis] = 1;
  return s;
}
}  // namespace

Variable add(const Variable& a, const Variable& b) {
  Shape sa = a.shape(), sb = b.shape();
  return make_result(sae::add(a.data(), b.data()), "add", {a, b}, [sa, sb](const Tensor& g, const Needs& n) {
    return Grads{n[0] ? sum_to(g, sa) : Tensor(), n[1] ? sum_to(g, sb) : Tensor()};
  });
}

Variable sub(const Variable& a, const Variable& b) {
  Shape sa = a.shape(), sb = b.shape();
  return make_result(sae::sub(a.data(), b.data()), "sub", {a, b}, [sa, sb](const Tensor& g, const Needs& n) {
    return Grads{n[0] ? sum_to(g, sa) : Tensor(), n[1] ? sum_to(sae::neg(g), sb) : Tensor()};
  });
}

Variable mul(const Variable& a, const Variable& b) {
  Tensor ta = a.data(), tb = b.data();
  return make_result(sae::mul(ta, tb), "mul", {a, b}, [ta, tb](const Tensor& g, const Needs& n) {
    return Grads{n[0] ? sum_to(g * tb, ta.shape()) : Tensor(), n[1] ? sum_to(g * ta, tb.shape()) : Tensor()};
  });
}

Variable div(const Variable& a, const Variable& b) {
  Tensor ta = a.data(), tb = b.data();
  return make_result(sae::div(ta, tb), "div", {a, b}, [ta, tb](const Tensor& g, const Needs& n) {
    // d(a/b)/db = -a / b^2
    return Grads{n[0] ? sum_to(g / tb, ta.shape()) : Tensor(),
                 n[1] ? sum_to(sae::neg(g * ta / sae::square(tb)), tb.shape()) : Tensor()};
  });
}

Variable neg(const Variable& x) {
  return make_result(sae::neg(x.data()), "neg", {x}, [](const Tensor& g, const Needs&) { return Grads{sae::neg(g)}; });
}

Variable square(const Variable& x) {
  Tensor tx = x.data();
  return make_result(sae::square(tx), "square", {x},
                     [tx](const Tensor& g, const Needs&) { return Grads{g * tx * 2.0}; });
}

Variable sqrt(const Variable& x) {
  Tensor y = sae::sqrt(x.data());
  return make_result(y, "sqrt", {x}, [y](const Tensor& g, const Needs&) { return Grads{g / y * 0.5}; });
}

Variable abs(const Variable& x) {
  Tensor tx = x.data();
  return make_result(sae::abs(tx), "abs", {x}, [tx](const Tensor& g, const Needs&) { return Grads{g * sign(tx)}; });
}

Variable relu(const Variable& x) {
  Tensor tx = x.data();
  return make_result(sae::relu(tx), "relu", {x}, [tx](const Tensor& g, const Needs&) { return Grads{g * step(tx)}; });
}

Variable exp(const Variable& x) {
  Tensor y = sae::exp(x.data());
  return make_result(y, "exp", {x}, [y](const Tensor& g, const Needs&) { return Grads{g * y}; });
}

Variable log(const Variable& x) {
  Tensor tx = x.data();
  return make_result(sae::log(tx), "log", {x}, [tx](const Tensor& g, const Needs&) { return Grads{g / tx}; });
}

Variable affine(const Variable& x, double scale, double shift) {
  return make_result(sae::affine(x.data(), scale, shift), "affine", {x},
                     [scale](const Tensor& g, const Needs&) { return Grads{mul_scalar(g, scale)}; });
}

Variable where(const Tensor& cond, const Variable& a, const Variable& b) {
  return make_result(sae::where(cond, a.data(), b.data()), "where", {a, b}, [cond](const Tensor& g, const Needs& n) {
    Tensor zero = Tensor::zeros(g.shape(), g.dtype(), g.device());
    return Grads{n[0] ? sae::where(cond, g, zero) : Tensor(), n[1] ? sae::where(cond, zero, g) : Tensor()};
  });
}

Variable sum(const Variable& x) {
  Shape s = x.shape();
  return make_result(sae::sum(x.data()), "sum", {x}, [s](const Tensor& g, const Needs&) { return Grads{expand(g, s)}; });
}

Variable sum(const Variable& x, int axis, bool keepdim) {
  Shape s = x.shape();
  return make_result(sae::sum(x.data(), axis, keepdim), "sum_axis", {x}, [s, axis](const Tensor& g, const Needs&) {
    return Grads{expand(g.reshape(keepdim_shape(s, axis)), s)};
  });
}

Variable mean(const Variable& x) {
  Shape s = x.shape();
  return make_result(sae::mean(x.data()), "mean", {x}, [s](const Tensor& g, const Needs&) {
    return Grads{expand(mul_scalar(g, 1.0 / static_cast<double>(s.numel())), s)};
  });
}

Variable mean(const Variable& x, int axis, bool keepdim) {
  Shape s = x.shape();
  return make_result(sae::mean(x.data(), axis, keepdim), "mean_axis", {x}, [s, axis](const Tensor& g, const Needs&) {
    const double len = static_cast<double>(s[axis < 0 ? axis + s.ndim : axis]);
    return Grads{expand(mul_scalar(g, 1.0 / len).reshape(keepdim_shape(s, axis)), s)};
  });
}

Variable norm2(const Variable& x, int axis, bool keepdim) {
  Tensor tx = x.data();
  Tensor y = sae::norm2(tx, axis, keepdim);
  return make_result(y, "norm2", {x}, [tx, y, axis](const Tensor& g, const Needs&) {
    // d||x||/dx = x / ||x||
    Shape kept = keepdim_shape(tx.shape(), axis);
    return Grads{tx * (g.reshape(kept) / y.reshape(kept))};
  });
}

Variable matmul(const Variable& a, const Variable& b, bool trans_a, bool trans_b) {
  Tensor ta = a.data(), tb = b.data();
  return make_result(sae::matmul(ta, tb, trans_a, trans_b), "matmul", {a, b},
                     [ta, tb, trans_a, trans_b](const Tensor& g, const Needs& n) {
                       // C = op(A) op(B); the four transpose cases written out.
                       Tensor ga, gb;
                       if (!trans_a && !trans_b) {  // C = A B
                         if (n[0]) ga = sae::matmul(g, tb, false, true);
                         if (n[1]) gb = sae::matmul(ta, g, true, false);
                       } else if (!trans_a && trans_b) {  // C = A B^T
                         if (n[0]) ga = sae::matmul(g, tb, false, false);
                         if (n[1]) gb = sae::matmul(g, ta, true, false);
                       } else if (trans_a && !trans_b) {  // C = A^T B
                         if (n[0]) ga = sae::matmul(tb, g, false, true);
                         if (n[1]) gb = sae::matmul(ta, g, false, false);
                       } else {  // C = A^T B^T
                         if (n[0]) ga = sae::matmul(tb, g, true, true);
                         if (n[1]) gb = sae::matmul(g, ta, true, true);
                       }
                       return Grads{ga, gb};
                     });
}

Variable transpose(const Variable& x) {
  return make_result(sae::transpose(x.data()), "transpose", {x},
                     [](const Tensor& g, const Needs&) { return Grads{sae::transpose(g)}; });
}

Variable reshape(const Variable& x, const Shape& shape) {
  Shape s = x.shape();
  return make_result(x.data().reshape(shape), "reshape", {x},
                     [s](const Tensor& g, const Needs&) { return Grads{g.reshape(s)}; });
}

Variable embedding(const Variable& table, const Tensor& ids) {
  Tensor t = table.data();
  return make_result(sae::embedding(t, ids), "embedding", {table}, [t, ids](const Tensor& g, const Needs&) {
    Tensor table_grad = Tensor::zeros(t.shape(), t.dtype(), t.device());
    embedding_backward_(table_grad, g, ids);
    return Grads{table_grad};
  });
}

// With xhat = (x - mean) * rstd and dxhat = g * weight, over each row of D values:
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dweight = sum over rows of g * xhat,
//   dbias = sum over rows of g.
Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, double eps) {
  Tensor tx = x.data(), tw = weight.data();
  const int64_t d = tx.size(-1), rows = d == 0 ? 0 : tx.numel() / d;
  Tensor out = Tensor::empty(tx.shape(), tx.dtype(), tx.device());
  Tensor mean = Tensor::empty(Shape{rows, 1}, tx.dtype(), tx.device());
  Tensor rstd = Tensor::empty(Shape{rows, 1}, tx.dtype(), tx.device());
  layer_norm_(out, mean, rstd, tx, tw, bias.data(), eps);
  return make_result(out, "layer_norm", {x, weight, bias}, [tx, tw, mean, rstd, rows, d](const Tensor& g, const Needs& n) {
    const Tensor g2 = g.reshape(Shape{rows, d});
    const Tensor xhat = (tx.reshape(Shape{rows, d}) - mean) * rstd;
    Tensor gx, gw, gb;
    if (n[0]) {
      const Tensor dxhat = g2 * tw;
      const Tensor centred = dxhat - sae::mean(dxhat, -1, true) - xhat * sae::mean(dxhat * xhat, -1, true);
      gx = (centred * rstd).reshape(tx.shape());
    }
    if (n[1]) gw = sae::sum(g2 * xhat, 0);
    if (n[2]) gb = sae::sum(g2, 0);
    return Grads{gx, gw, gb};
  });
}

Variable gelu_new(const Variable& x) {
  Tensor tx = x.data();
  return make_result(sae::gelu_new(tx), "gelu_new", {x},
                     [tx](const Tensor& g, const Needs&) { return Grads{g * gelu_new_grad(tx)}; });
}

Variable gelu(const Variable& x) {
  Tensor tx = x.data();
  return make_result(sae::gelu(tx), "gelu", {x},
                     [tx](const Tensor& g, const Needs&) { return Grads{g * gelu_grad(tx)}; });
}

// dx = y * (g - sum(g * y)) along the row.
Variable softmax(const Variable& x) {
  Tensor y = sae::softmax(x.data());
  return make_result(y, "softmax", {x}, [y](const Tensor& g, const Needs&) {
    return Grads{y * (g - sae::sum(g * y, -1, true))};
  });
}

Variable batched_matmul(const Variable& a, const Variable& b, bool trans_a, bool trans_b) {
  Tensor ta = a.data(), tb = b.data();
  return make_result(sae::batched_matmul(ta, tb, trans_a, trans_b), "batched_matmul", {a, b},
                     [ta, tb, trans_a, trans_b](const Tensor& g, const Needs& n) {
                       // The four cases of matmul, per batch entry.
                       Tensor ga, gb;
                       if (!trans_a && !trans_b) {  // C = A B
                         if (n[0]) ga = sae::batched_matmul(g, tb, false, true);
                         if (n[1]) gb = sae::batched_matmul(ta, g, true, false);
                       } else if (!trans_a && trans_b) {  // C = A B^T
                         if (n[0]) ga = sae::batched_matmul(g, tb, false, false);
                         if (n[1]) gb = sae::batched_matmul(g, ta, true, false);
                       } else if (trans_a && !trans_b) {  // C = A^T B
                         if (n[0]) ga = sae::batched_matmul(tb, g, false, true);
                         if (n[1]) gb = sae::batched_matmul(ta, g, false, false);
                       } else {  // C = A^T B^T
                         if (n[0]) ga = sae::batched_matmul(tb, g, true, true);
                         if (n[1]) gb = sae::batched_matmul(g, ta, true, true);
                       }
                       return Grads{ga, gb};
                     });
}

// The gradient flows through the kept scores and is 0 at the masked ones.
Variable attention_mask(const Variable& scores, int64_t window) {
  return make_result(sae::attention_mask(scores.data(), window), "attention_mask", {scores},
                     [window](const Tensor& g, const Needs&) { return Grads{sae::attention_mask(g, window, 0.0)}; });
}

Variable swap_axes01(const Variable& x) {
  return make_result(sae::swap_axes01(x.data()), "swap_axes01", {x},
                     [](const Tensor& g, const Needs&) { return Grads{sae::swap_axes01(g)}; });
}

// A rotation is undone by the opposite angle: dx = rotary(g, cos, -sin).
Variable rotary(const Variable& x, const Tensor& cos, const Tensor& sin) {
  return make_result(sae::rotary(x.data(), cos, sin), "rotary", {x}, [cos, sin](const Tensor& g, const Needs&) {
    return Grads{sae::rotary(g, cos, sae::neg(sin))};
  });
}

// y = x * r * w, r = (mean(x^2) + eps)^(-1/2), per row of D values; with u = g * w:
//   dx = r * u - x * r^3 * mean(u * x),  dweight = sum over rows of g * x * r.
Variable rms_norm(const Variable& x, const Variable& weight, double eps) {
  Tensor tx = x.data(), tw = weight.data();
  const int64_t d = tx.size(-1), rows = d == 0 ? 0 : tx.numel() / d;
  Tensor out = Tensor::empty(tx.shape(), tx.dtype(), tx.device());
  Tensor rstd = Tensor::empty(Shape{rows, 1}, tx.dtype(), tx.device());
  rms_norm_(out, rstd, tx, tw, eps);
  return make_result(out, "rms_norm", {x, weight}, [tx, tw, rstd, rows, d](const Tensor& g, const Needs& n) {
    const Tensor g2 = g.reshape(Shape{rows, d}), x2 = tx.reshape(Shape{rows, d});
    Tensor gx, gw;
    if (n[0]) {
      const Tensor u = g2 * tw;
      const Tensor r3 = rstd * rstd * rstd;
      gx = (u * rstd - x2 * (r3 * sae::mean(u * x2, -1, true))).reshape(tx.shape());
    }
    if (n[1]) gw = sae::sum(g2 * (x2 * rstd), 0);
    return Grads{gx, gw};
  });
}

Variable glu(const Variable& x, GluActivation act) {
  Tensor tx = x.data();
  return make_result(sae::glu(tx, act), "glu", {x}, [tx, act](const Tensor& g, const Needs&) {
    Tensor gx = Tensor::empty(tx.shape(), tx.dtype(), tx.device());
    glu_backward_(gx, tx, g, act);
    return Grads{gx};
  });
}

// d/dx cap tanh(x / cap) = 1 - tanh^2(x / cap) = 1 - (y / cap)^2.
Variable soft_cap(const Variable& x, double cap) {
  Tensor y = sae::soft_cap(x.data(), cap);
  return make_result(y, "soft_cap", {x}, [y, cap](const Tensor& g, const Needs&) {
    const Tensor t = mul_scalar(y, 1.0 / cap);
    return Grads{g * affine(t * t, -1.0, 1.0)};
  });
}

}  // namespace sae::ag

namespace sae {
Variable operator+(const Variable& a, const Variable& b) { return ag::add(a, b); }
Variable operator-(const Variable& a, const Variable& b) { return ag::sub(a, b); }
Variable operator*(const Variable& a, const Variable& b) { return ag::mul(a, b); }
Variable operator/(const Variable& a, const Variable& b) { return ag::div(a, b); }
Variable operator-(const Variable& x) { return ag::neg(x); }
Variable operator*(const Variable& x, double s) { return ag::affine(x, s, 0.0); }
Variable operator*(double s, const Variable& x) { return ag::affine(x, s, 0.0); }
}  // namespace sae
