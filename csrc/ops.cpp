// Every fastasd operator schema, in one place.
//
// Implementations are registered per dispatch key elsewhere: csrc/cpu/<op>.cpp (CPU) and
// csrc/cuda/<op>.cu (CUDA), each with TORCH_LIBRARY_IMPL(fastasd, <Key>, m). Python never branches
// on the device: torch.ops.fastasd.<op> dispatches on the tensors' device. The math of each op is
// defined by fastasd/reference.py.
#include <torch/library.h>

TORCH_LIBRARY(fastasd, m) {
  // [B, N] -> [B, 1 + (N - n_fft) // hop, n_fft // 2 + 1]: |rfft(periodic Hann * frame)|, no
  // centering/padding; normalize subtracts each clip's per-bin mean over frames.
  m.def("stft_magnitude(Tensor waveforms, int n_fft, int hop, bool normalize) -> Tensor");

  // Sub-cluster AdaCos loss (forward returns what the backward needs).
  // Outputs: loss, scale, then what the backward reuses: lse_total [B], lse_class [B, C],
  // cos [B, C*K] (the cosines; the backward then needs no GEMM to recompute them) and
  // col_inv_norms [C*K] (1 / max(|centers[:, j]|, eps)).
  m.def("subcluster_adacos(Tensor embeddings, Tensor centers, Tensor targets, float scale, int n_subclusters, bool update_scale) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("subcluster_adacos_backward(Tensor grad_loss, Tensor embeddings, Tensor centers, Tensor targets, Tensor scale, Tensor lse_total, Tensor lse_class, Tensor cos, Tensor col_inv_norms, int n_subclusters, bool centers_grad) -> (Tensor, Tensor)");

  // queries [N, D], refs [M, D] (group g = rows ref_offsets[g]..ref_offsets[g+1]), query_group [N]
  // int64, ref_offsets [G+1] int64 -> [N]: 1 - max cosine similarity over the query's group; with
  // the optional per-reference ref_scale / ref_shift [M] (dtype of refs; missing = ones / zeros):
  // min_j ref_scale[j] * (1 - cos_ij) + ref_shift[j].
  m.def("min_cosine_distance(Tensor queries, Tensor refs, Tensor query_group, Tensor ref_offsets, Tensor? ref_scale=None, Tensor? ref_shift=None) -> Tensor");
}

#ifdef FASTASD_PYTHON_MODULE
// The fastasd._C Python module is empty: importing it loads this shared library, whose static
// initializers register the operators above (the pytorch/extension-cpp pattern).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "fastasd operator library (operators are in torch.ops.fastasd)",  // doc
      -1,    // size of per-interpreter state
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
#endif
