// SaeParams and SaeAdamState (see params.h).
#include "sae/params.h"

#include <cmath>

#include "tensor/ops.h"

namespace sae {

SaeParams SaeParams::standard_init(int64_t d_in, int64_t d_sae, Rng& rng, DType dtype, Device device) {
  if (d_in <= 0 || d_sae <= 0) throw UsageError(cat("SAE: d_in and d_sae must be positive, got ", d_in, ", ", d_sae));
  const double enc_bound = 1.0 / std::sqrt(static_cast<double>(d_in));
  const double dec_bound = 1.0 / std::sqrt(static_cast<double>(d_sae));
  SaeParams p;
  p.W_enc = uniform_tensor(Shape{d_in, d_sae}, -enc_bound, enc_bound, rng, dtype, device);
  p.b_enc = uniform_tensor(Shape{d_sae}, -enc_bound, enc_bound, rng, dtype, device);
  p.W_dec = uniform_tensor(Shape{d_sae, d_in}, -dec_bound, dec_bound, rng, dtype, device);
  p.b_dec = uniform_tensor(Shape{d_in}, -dec_bound, dec_bound, rng, dtype, device);
  return p;
}

SaeParams SaeParams::from_tensors(Tensor W_enc, Tensor b_enc, Tensor W_dec, Tensor b_dec) {
  if (!W_enc.defined() || W_enc.ndim() != 2) throw DataError(cat("SAE: W_enc must be 2-D, got ", W_enc.describe()));
  const int64_t d = W_enc.size(0), f = W_enc.size(1);
  if (!b_enc.defined() || !W_dec.defined() || !b_dec.defined() || b_enc.shape() != Shape{f} ||
      W_dec.shape() != Shape{f, d} || b_dec.shape() != Shape{d})
    throw DataError(cat("SAE: inconsistent parameter shapes: W_enc ", W_enc.describe(), ", b_enc ", b_enc.describe(),
                        ", W_dec ", W_dec.describe(), ", b_dec ", b_dec.describe()));
  SaeParams p;
  p.W_enc = std::move(W_enc);
  p.b_enc = std::move(b_enc);
  p.W_dec = std::move(W_dec);
  p.b_dec = std::move(b_dec);
  return p;
}

namespace {
// A copy of `from` whose defined tensors are replaced by make(tensor).
template <typename Make>
SaeParams map_tensors(const SaeParams& from, Make make) {
  SaeParams p = from;
  for (Tensor* t : {&p.W_enc, &p.b_enc, &p.W_dec, &p.b_dec, &p.W_skip})
    if (t->defined()) *t = make(*t);
  for (NamedTensor& o : p.own)
    if (o.tensor.defined()) o.tensor = make(o.tensor);
  for (NamedTensor& o : p.stated)
    if (o.tensor.defined()) o.tensor = make(o.tensor);
  return p;
}
}  // namespace

SaeParams SaeParams::zeros_like(const SaeParams& like) {
  SaeParams p = map_tensors(like, [](const Tensor& t) { return Tensor::zeros(t.shape(), t.dtype(), t.device()); });
  p.stated.clear();  // gradients and moments of the trained tensors only
  return p;
}

SaeParams SaeParams::to(Device device) const {
  return map_tensors(*this, [device](const Tensor& t) { return t.to(device); });
}

SaeParams SaeParams::clone() const {
  return map_tensors(*this, [](const Tensor& t) { return t.clone(); });
}

int SaeParams::latent_axis(const std::string& name) {
  if (name == "W_enc") return 1;
  if (name == "b_dec" || name == "W_skip") return -1;
  return 0;
}

bool SaeParams::scale_dependent(const std::string& name) {
  return name == "W_enc" || name == "W_dec" || name == "b_dec" || name == "W_skip";
}

namespace {
// The scale of each of `width` columns, from scales over equal blocks (inverted when asked).
std::vector<double> column_scales(const std::vector<double>& blocks, int64_t width, bool inverse) {
  if (blocks.empty() || width % static_cast<int64_t>(blocks.size()) != 0)
    throw Error(cat("fold_input_scales: ", blocks.size(), " scales for ", width, " columns"));
  const int64_t per = width / static_cast<int64_t>(blocks.size());
  std::vector<double> out(static_cast<size_t>(width));
  for (int64_t j = 0; j < width; ++j) {
    const double s = blocks[static_cast<size_t>(j / per)];
    if (!(s > 0) || !std::isfinite(s)) throw Error(cat("fold_input_scales: a scale of ", s));
    out[static_cast<size_t>(j)] = inverse ? 1.0 / s : s;
  }
  return out;
}

}  // namespace

Tensor scaled_host(Tensor t, const std::vector<double>& row, const std::vector<double>& col) {
  // In place when t was handed over (moved in) as the only handle on host float32 bytes of its own.
  const bool shaped = t.defined() && t.ndim() >= 1 && t.ndim() <= 2;
  const int64_t rows = shaped && t.ndim() == 2 ? t.size(0) : 1, cols = !shaped ? 0 : t.ndim() == 2 ? t.size(1) : t.size(0);
  if (!shaped || (!row.empty() && int64_t(row.size()) != rows) || (!col.empty() && int64_t(col.size()) != cols))
    throw Error(cat("scaled_host: ", row.size(), " row and ", col.size(), " column factors for a tensor of shape ",
                    t.shape().str()));
  Tensor out = t.dtype() == DType::F32 && t.owns_its_host_bytes() ? std::move(t) : t.to(Device::CPU).to(DType::F32).clone();
  float* p = out.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      p[r * cols + c] = static_cast<float>(static_cast<double>(p[r * cols + c]) * scale_factor(row, col, r, c));
  return out;
}

InputScaleFold input_scale_fold(const SaeParams& p, const std::vector<double>& in, const std::vector<double>& out,
                                bool inverse) {
  return {column_scales(in, p.d_in(), inverse), column_scales(out, p.d_out(), !inverse)};  // divided by out
}

SaeParams fold_input_scales(SaeParams p, const std::vector<double>& in, const std::vector<double>& out, bool inverse) {
  const InputScaleFold fold = input_scale_fold(p, in, out, inverse);
  p.W_enc = scaled_host(std::move(p.W_enc), fold.in_rows, {});
  p.W_dec = scaled_host(std::move(p.W_dec), {}, fold.out_columns);
  p.b_dec = scaled_host(std::move(p.b_dec), {}, fold.out_columns);
  if (p.W_skip.defined()) p.W_skip = scaled_host(std::move(p.W_skip), fold.in_rows, fold.out_columns);
  return p;
}

SaeParams SaeParams::latent_slice(int64_t begin, int64_t end) const {
  if (begin < 0 || end <= begin || end > d_sae())
    throw Error(cat("SaeParams::latent_slice: latents [", begin, ", ", end, ") of ", d_sae()));
  SaeParams p = *this;
  for (auto& [name, t] : p.present()) {
    const int axis = latent_axis(name);
    if (axis == 0) *t = t->slice_rows(begin, end).clone();
    if (axis == 1) *t = transpose(transpose(*t).slice_rows(begin, end));
    if (axis < 0) *t = t->clone();
  }
  for (NamedTensor& o : p.stated) o.tensor = o.tensor.slice_rows(begin, end).clone();
  return p;
}

std::vector<std::pair<std::string, Tensor*>> SaeParams::present() {
  std::vector<std::pair<std::string, Tensor*>> out;
  const char* names[5] = {"W_enc", "b_enc", "W_dec", "b_dec", "W_skip"};
  Tensor* dictionary[5] = {&W_enc, &b_enc, &W_dec, &b_dec, &W_skip};
  for (int i = 0; i < 5; ++i)
    if (dictionary[i]->defined()) out.push_back({names[i], dictionary[i]});
  for (NamedTensor& o : own)
    if (o.tensor.defined()) out.push_back({o.name, &o.tensor});
  return out;
}

std::vector<std::pair<std::string, const Tensor*>> SaeParams::present() const {
  std::vector<std::pair<std::string, const Tensor*>> out;
  for (const auto& [name, t] : const_cast<SaeParams*>(this)->present()) out.push_back({name, t});
  return out;
}

bool SaeParams::has_own(const std::string& name) const {
  for (const NamedTensor& o : own)
    if (o.name == name) return true;
  return false;
}

Tensor& SaeParams::own_tensor(const std::string& name) {
  for (NamedTensor& o : own)
    if (o.name == name) return o.tensor;
  throw Error(cat("SAE (", kind, "): has no tensor ", name));
}

const Tensor& SaeParams::own_tensor(const std::string& name) const {
  return const_cast<SaeParams*>(this)->own_tensor(name);
}

void SaeParams::check_shapes(bool with_b_enc, const std::vector<std::string>& own_names) const {
  if (!W_enc.defined() || W_enc.ndim() != 2)
    throw DataError(cat("SAE (", kind, "): W_enc must be 2-D, got ", W_enc.describe()));
  const int64_t d = W_enc.size(0), f = W_enc.size(1);
  if (!W_dec.defined() || W_dec.ndim() != 2 || W_dec.size(0) != f)
    throw DataError(cat("SAE (", kind, "): W_dec should be [", f, ", d_out] (W_enc is ", W_enc.describe(), "), got ",
                        W_dec.defined() ? W_dec.describe() : std::string("none")));
  const int64_t d_out = W_dec.size(1);
  if (sources < 1 || d % sources != 0 || (sources > 1 && (d_out != d || transcoder)))
    throw DataError(cat("SAE (", kind, "): ", sources, " sources do not split d_in ", d, " and d_out ", d_out));
  if (!transcoder && (d_out != d || W_skip.defined()))
    throw DataError(cat("SAE (", kind, "): d_out ", d_out, (W_skip.defined() ? " and W_skip" : ""),
                        " but not a transcoder (d_in ", d, ")"));
  auto want = [&](const std::string& name, const Tensor& t, bool needed, const Shape& shape) {
    if (!needed && t.defined())
      throw DataError(cat("SAE (", kind, "): has a tensor ", name, " that this architecture does not use"));
    if (needed && (!t.defined() || t.shape() != shape))
      throw DataError(cat("SAE (", kind, "): ", name, " should be ", shape.str(), " (W_enc is ", W_enc.describe(),
                          "), got ", t.defined() ? t.describe() : std::string("none")));
    if (needed && (t.dtype() != W_enc.dtype() || t.device() != W_enc.device()))
      throw DataError(cat("SAE (", kind, "): ", name, " is ", t.describe(), " but W_enc is ", W_enc.describe()));
  };
  want("b_enc", b_enc, with_b_enc, Shape{f});
  want("W_dec", W_dec, true, Shape{f, d_out});
  want("b_dec", b_dec, true, Shape{d_out});
  if (W_skip.defined()) want("W_skip", W_skip, true, Shape{d, d_out});
  for (const NamedTensor& o : own) {
    bool listed = false;
    for (const std::string& name : own_names) listed |= name == o.name;
    if (!listed) throw DataError(cat("SAE (", kind, "): has a tensor ", o.name, " that this architecture does not use"));
  }
  for (const std::string& name : own_names) want(name, has_own(name) ? own_tensor(name) : Tensor(), true, Shape{f});
}

SaeAdamState SaeAdamState::zeros_like(const SaeParams& params, double beta1, double beta2, double eps) {
  SaeAdamState s;
  s.m = SaeParams::zeros_like(params);
  s.v = SaeParams::zeros_like(params);
  s.beta1 = beta1;
  s.beta2 = beta2;
  s.eps = eps;
  return s;
}

AdamScalars SaeAdamState::next_step(double lr) {
  ++steps;
  AdamScalars s;
  s.lr = lr;
  s.beta1 = beta1;
  s.beta2 = beta2;
  s.eps = eps;
  s.weight_decay = 0.0;
  s.step = steps;
  return s;
}

}  // namespace sae
