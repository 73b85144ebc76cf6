// The op schemas of the `miue` namespace (one TORCH_LIBRARY block) and, in the Python build,
// the module `miue_ext._C`, which exists only so that `import miue_ext._C` loads the ops.
#include <torch/library.h>

#ifdef MIUE_PYTHON_MODULE
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif

TORCH_LIBRARY(miue, m) {
  // L = sim_weight * L_sim + dist_weight * L_dist; also returns what the backward reuses.
  m.def(
      "mi_ue_loss_forward(Tensor features, Tensor labels, float temperature, float sim_weight, "
      "float dist_weight, int tile_rows) -> (Tensor loss, Tensor row_stats, Tensor gram, Tensor near_dup)");
  m.def(
      "mi_ue_loss_backward(Tensor grad, Tensor features, Tensor labels, Tensor row_stats, Tensor gram, Tensor "
      "near_dup, "
      "float temperature, float sim_weight, float dist_weight, int tile_rows) -> Tensor");
  m.def("intra_class_cosine_forward(Tensor features, Tensor labels) -> Tensor");
  m.def("intra_class_cosine_backward(Tensor grad, Tensor features, Tensor labels) -> Tensor");
  m.def("pgd_update_(Tensor(a!) delta, Tensor x, Tensor grad, float alpha, float eps) -> ()");
  m.def(
      "pgd_update_indexed_(Tensor(a!) poison, Tensor index, Tensor x, Tensor grad, float alpha, "
      "float eps, bool check_index=True) -> ()");
}
