// fused.c's kernels as torch operators (torch.ops.distkg.*), so that torch.compile and the exporters
// see them as ops with schemas (their fake implementations are registered in distkg/kernels/__init__.py)
// and the arguments reach C as tensors, not as a struct mirrored in Python. CPU, float32, contiguous:
// callers check distkg.kernels.why_not first and run their torch path otherwise.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>
#include <utility>

#include "fused.h"

namespace {

void check_scores(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              what, ": a contiguous float32 CPU tensor was expected");
}

// The rows of MATRIX (a [N, E] float32 matrix) that the batch's B rows read: its data and an index
// (NULL: row i), bounds-checked here because the C loop reads unchecked.
std::pair<const float*, const int64_t*> rows_of(const at::Tensor& matrix, const std::optional<at::Tensor>& idx,
                                                int64_t B, int64_t E, const char* what) {
  check_scores(matrix, what);
  TORCH_CHECK(matrix.dim() == 2 && matrix.size(1) == E, what, ": a [N, ", E, "] matrix was expected, got ",
              matrix.sizes());
  if (!idx.has_value()) {
    TORCH_CHECK(matrix.size(0) == B, what, ": ", matrix.size(0), " rows for a batch of ", B);
    return {matrix.data_ptr<float>(), nullptr};
  }
  const at::Tensor& i = *idx;
  TORCH_CHECK(i.scalar_type() == at::kLong && i.is_contiguous() && i.dim() == 1 && i.size(0) == B, what,
              ": a contiguous int64 index of ", B, " rows was expected");
  const int64_t* p = i.data_ptr<int64_t>();
  for (int64_t r = 0; r < B; r++)
    TORCH_CHECK(p[r] >= 0 && p[r] < matrix.size(0), what, ": row index out of range for a [", matrix.size(0), ", ",
                E, "] matrix");
  return {matrix.data_ptr<float>(), p};
}

std::tuple<at::Tensor, at::Tensor> fused_rows(
    const at::Tensor& s, const std::optional<at::Tensor>& answers, at::ArrayRef<double> inv_t,
    at::ArrayRef<double> coef, int64_t kd, double kd_coef, const std::optional<at::Tensor>& p,
    const std::optional<at::Tensor>& p_idx, int64_t ce, double ce_coef, int64_t hub, double h_delta, double h_scale,
    const std::optional<at::Tensor>& hy, const std::optional<at::Tensor>& hy_idx, int64_t sup, double s_mix,
    double s_scale, const std::optional<at::Tensor>& sy, const std::optional<at::Tensor>& sy_idx) {
  check_scores(s, "fused_rows' scores");
  TORCH_CHECK(s.dim() == 2, "fused_rows: [B, E] scores were expected");
  const int64_t B = s.size(0), E = s.size(1);
  TORCH_CHECK(!inv_t.empty() && inv_t.size() <= MAXT && coef.size() == inv_t.size(), "fused_rows takes 1 to ", MAXT,
              " temperatures, each with a coefficient");
  fused_args a{};
  a.B = B;
  a.E = E;
  a.threads = at::get_num_threads();
  a.ntemps = static_cast<int64_t>(inv_t.size());
  for (size_t k = 0; k < inv_t.size(); k++) {
    a.inv_t[k] = inv_t[k];
    a.coef[k] = coef[k];
  }
  at::Tensor grad = at::empty_like(s);
  at::Tensor vals = at::zeros({B, NVALS}, s.options().dtype(at::kDouble));
  a.s = s.data_ptr<float>();
  a.grad = grad.data_ptr<float>();
  a.vals = vals.data_ptr<double>();
  if (ce >= 0 || sup >= 0) {
    TORCH_CHECK(answers.has_value() && answers->scalar_type() == at::kLong && answers->is_contiguous() &&
                    answers->numel() == B, "fused_rows: ce and llm_supervised need the batch's int64 answers");
    const int64_t* ans = answers->data_ptr<int64_t>();
    for (int64_t r = 0; r < B; r++) TORCH_CHECK(ans[r] >= 0 && ans[r] < E, "an answer is out of range for ", E, " entities");
    a.answers = ans;
  }
  a.kd = kd, a.kd_coef = kd_coef, a.ce = ce, a.ce_coef = ce_coef;
  a.hub = hub, a.h_delta = h_delta, a.h_scale = h_scale, a.sup = sup, a.s_mix = s_mix, a.s_scale = s_scale;
  if (kd >= 0) std::tie(a.p, a.p_idx) = rows_of(*p, p_idx, B, E, "kd's soft targets");
  if (hub >= 0) std::tie(a.hy, a.hy_idx) = rows_of(*hy, hy_idx, B, E, "llm_huber's P_LLM");
  if (sup >= 0) std::tie(a.sy, a.sy_idx) = rows_of(*sy, sy_idx, B, E, "llm_supervised's P_LLM");
  const int rc = distkg_fused_rows(&a);
  TORCH_CHECK(rc == 0, "distkg_fused_rows failed (code ", rc, ": 1 is a failed row-buffer allocation)");
  return {grad, vals};
}

void neg_sqrt_(at::Tensor x, double eps) {
  check_scores(x, "neg_sqrt_");
  distkg_neg_sqrt(x.data_ptr<float>(), x.numel(), static_cast<float>(eps), at::get_num_threads());
}

at::Tensor negl2_weights(const at::Tensor& g, const at::Tensor& s, double eps) {
  check_scores(g, "negl2_weights' gradient");
  check_scores(s, "negl2_weights' distances");
  TORCH_CHECK(g.sizes() == s.sizes(), "gradient ", g.sizes(), " and distances ", s.sizes(), " differ in shape");
  at::Tensor w = at::empty_like(s);
  distkg_negl2_weights(g.data_ptr<float>(), s.data_ptr<float>(), w.data_ptr<float>(), s.numel(),
                       static_cast<float>(eps), at::get_num_threads());
  return w;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(distkg, m) {  // a fragment: distkg.models.ttranse defines distkg::neg_l2 in Python
  m.def("fused_rows(Tensor s, Tensor? answers, float[] inv_t, float[] coef, int kd, float kd_coef, Tensor? p, "
        "Tensor? p_idx, int ce, float ce_coef, int hub, float h_delta, float h_scale, Tensor? hy, Tensor? hy_idx, "
        "int sup, float s_mix, float s_scale, Tensor? sy, Tensor? sy_idx) -> (Tensor, Tensor)");
  m.def("neg_sqrt_(Tensor(a!) x, float eps) -> ()");
  m.def("negl2_weights(Tensor g, Tensor s, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(distkg, CPU, m) {
  m.impl("fused_rows", fused_rows);
  m.impl("neg_sqrt_", neg_sqrt_);
  m.impl("negl2_weights", negl2_weights);
}
