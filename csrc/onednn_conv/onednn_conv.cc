// oneDNN-backed 2-D convolution for XLA:CPU through the XLA FFI (jax.ffi).
//
// Three handlers, all float32, activations NHWC and kernels HWIO (row-major,
// XLA's default layouts), stride/padding as int64 attributes sh, sw, pt, pb,
// pl, pr (top/bottom/left/right padding):
//   OnednnConvFwd    (x[N,H,W,C], k[KH,KW,C,O])  -> y[N,OH,OW,O]
//   OnednnConvBwdData(g[N,OH,OW,O], k)           -> dx[N,H,W,C]  (shape from the result)
//   OnednnConvBwdWeights(x, g)                   -> dk[KH,KW,C,O] (shape from the result)
// Activations stay in the caller's NHWC buffers (oneDNN's brgemm convolutions
// run on NHWC directly); kernels go through a reorder to the layout the
// primitive asks for (`format_tag::any`), which is cheap next to the conv.
// Primitives are built once per shape/attributes and cached (JIT code
// generation takes milliseconds). Threading: oneDNN's own runtime (OpenMP in
// the onednn-cpu-gomp wheel, OMP_NUM_THREADS).
#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum Kind : int64_t { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };
using Key = std::array<int64_t, 17>;

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

struct Conv {
  dnnl::primitive prim;
  memory::desc wei_user, wei_prim;  // HWIO and the primitive's kernel layout
  bool wei_reorder = false;
  dnnl::reorder wei_r;              // user->prim (fwd, bwd data) or prim->user (bwd weights)
  size_t scratch_bytes = 0;
  std::string impl;                 // oneDNN's implementation name
};

std::mutex& CacheMutex() {
  static std::mutex m;
  return m;
}
std::map<Key, std::shared_ptr<Conv>>& Cache() {
  static std::map<Key, std::shared_ptr<Conv>> c;
  return c;
}

// Key: kind, N, H, W, C, KH, KW, O, OH, OW, sh, sw, pt, pb, pl, pr, threads; built
// with this thread's OpenMP thread count set to `threads` (oneDNN sizes its work split then).
std::shared_ptr<Conv> Get(const Key& key) {
  {
    std::lock_guard<std::mutex> lock(CacheMutex());
    auto it = Cache().find(key);
    if (it != Cache().end()) return it->second;
  }
  auto [kind, n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, nthr] = key;
  (void)nthr;
  auto& eng = Engine();
  memory::desc src({n, c, h, w}, dt::f32, tag::nhwc);
  memory::desc dst({n, o, oh, ow}, dt::f32, tag::nhwc);
  memory::desc wei_any({o, c, kh, kw}, dt::f32, tag::any);
  memory::desc wei_user({o, c, kh, kw}, dt::f32, tag::hwio);
  memory::dims strides{sh, sw}, pad_l{pt, pl}, pad_r{pb, pr};
  auto algo = dnnl::algorithm::convolution_direct;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);

  auto conv = std::make_shared<Conv>();
  conv->wei_user = wei_user;
  dnnl::convolution_forward::primitive_desc fwd(
      eng, dnnl::prop_kind::forward_training, algo, src, wei_any, dst, strides, pad_l, pad_r,
      attr);
  if (kind == kFwd) {
    conv->prim = dnnl::convolution_forward(fwd);
    conv->wei_prim = fwd.weights_desc();
    conv->scratch_bytes = fwd.scratchpad_desc().get_size();
    conv->impl = fwd.impl_info_str();
  } else if (kind == kBwdData) {
    dnnl::convolution_backward_data::primitive_desc bwd(eng, algo, src, wei_any, dst, strides,
                                                        pad_l, pad_r, fwd, attr);
    conv->prim = dnnl::convolution_backward_data(bwd);
    conv->wei_prim = bwd.weights_desc();
    conv->scratch_bytes = bwd.scratchpad_desc().get_size();
    conv->impl = bwd.impl_info_str();
  } else {
    dnnl::convolution_backward_weights::primitive_desc bwd(eng, algo, src, wei_any, dst, strides,
                                                           pad_l, pad_r, fwd, attr);
    conv->prim = dnnl::convolution_backward_weights(bwd);
    conv->wei_prim = bwd.diff_weights_desc();
    conv->scratch_bytes = bwd.scratchpad_desc().get_size();
    conv->impl = bwd.impl_info_str();
  }
  conv->wei_reorder = conv->wei_prim != wei_user;
  if (conv->wei_reorder) {
    conv->wei_r = kind == kBwdWeights
                      ? dnnl::reorder(dnnl::reorder::primitive_desc(eng, conv->wei_prim, eng,
                                                                    wei_user))
                      : dnnl::reorder(dnnl::reorder::primitive_desc(eng, wei_user, eng,
                                                                    conv->wei_prim));
  }
  std::lock_guard<std::mutex> lock(CacheMutex());
  return Cache().emplace(key, conv).first->second;
}

// Runs `conv` on one batch slice; weights already in the primitive's layout
// (fwd, bwd data) or to be written in it (bwd weights).
void Exec(const Conv& conv, Kind kind, float* x, void* k_prim, float* y, int64_t n,
          ffi::Span<const int64_t> xd, ffi::Span<const int64_t> yd) {
  auto& eng = Engine();
  dnnl::stream s(eng);
  memory::desc src({n, xd[3], xd[1], xd[2]}, dt::f32, tag::nhwc);
  memory::desc dst({n, yd[3], yd[1], yd[2]}, dt::f32, tag::nhwc);
  memory x_m(src, eng, x), y_m(dst, eng, y), k_m(conv.wei_prim, eng, k_prim);
  thread_local std::unique_ptr<char[]> scratch;
  thread_local size_t scratch_size = 0;
  if (conv.scratch_bytes > scratch_size) {
    scratch.reset(new char[conv.scratch_bytes]);
    scratch_size = conv.scratch_bytes;
  }
  memory scratch_m(memory::desc({static_cast<int64_t>(conv.scratch_bytes)}, dt::u8, tag::x),
                   eng, scratch.get());
  int src_arg = kind == kBwdData ? DNNL_ARG_DIFF_SRC : DNNL_ARG_SRC;
  int wei_arg = kind == kBwdWeights ? DNNL_ARG_DIFF_WEIGHTS : DNNL_ARG_WEIGHTS;
  int dst_arg = kind == kFwd ? DNNL_ARG_DST : DNNL_ARG_DIFF_DST;
  conv.prim.execute(s, {{src_arg, x_m}, {wei_arg, k_m}, {dst_arg, y_m},
                        {DNNL_ARG_SCRATCHPAD, scratch_m}});
  s.wait();
}

// Runs work(0..pieces-1) on the calling thread and up to threads-1 tasks of
// XLA's intra-op pool, each claiming the next piece (so a slow or descheduled
// thread delays one piece, not a statically assigned half). Returns after all
// pieces are done; a helper that starts late finds nothing left to claim.
struct Job {
  std::atomic<int64_t> next{0}, done{0};
  int64_t pieces = 0;
  std::function<void(int64_t)> work;
  std::mutex m;
  std::condition_variable cv;
  std::string error;
};

void Claim(const std::shared_ptr<Job>& job) {
  for (int64_t i; (i = job->next.fetch_add(1)) < job->pieces;) {
    try {
      job->work(i);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(job->m);
      job->error = e.what();
    }
    if (job->done.fetch_add(1) + 1 == job->pieces) {
      std::lock_guard<std::mutex> lock(job->m);
      job->cv.notify_all();
    }
  }
}

std::string Parallel(ffi::ThreadPool& pool, int64_t pieces, std::function<void(int64_t)> work) {
  auto job = std::make_shared<Job>();
  job->pieces = pieces;
  job->work = std::move(work);
  int64_t helpers = std::min<int64_t>(pool.num_threads(), pieces) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { Claim(job); });
  Claim(job);
  std::unique_lock<std::mutex> lock(job->m);
  job->cv.wait(lock, [&] { return job->done.load() == job->pieces; });
  return job->error;
}

// oneDNN's thread count in whole-batch mode: the process default, read when the
// library is loaded (before any thread's count is set to 1 below).
const int kOmpThreads = omp_get_max_threads();
int OmpThreads() { return kOmpThreads; }

// pieces == 0: one oneDNN call over the whole batch, threaded by OpenMP.
// pieces > 0: the batch cut into `pieces` equal slices (fewer if the batch
// does not divide), each run single-threaded on XLA's intra-op pool; weight
// gradients of the slices are summed in slice order (deterministic).
ffi::Error Run(Kind kind, float* x, float* k, float* y, ffi::Span<const int64_t> xd,
               ffi::Span<const int64_t> kd, ffi::Span<const int64_t> yd, int64_t sh, int64_t sw,
               int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t pieces,
               ffi::ThreadPool& pool) {
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument("onednn_conv: expected NHWC activations, HWIO kernel");
  if (kd[2] != xd[3] || kd[3] != yd[3] || xd[0] != yd[0])
    return ffi::Error::InvalidArgument("onednn_conv: inconsistent shapes");
  int64_t n = xd[0];
  if (pieces > 0) {
    pieces = std::min(pieces, n);
    while (n % pieces) --pieces;
  }
  int64_t nthr = pieces > 0 ? 1 : OmpThreads();
  int64_t slice = pieces > 0 ? n / pieces : n;
  try {
    omp_set_num_threads(static_cast<int>(nthr));  // this thread's oneDNN calls
    Key key{kind, slice, xd[1], xd[2], xd[3], kd[0], kd[1], kd[3], yd[1], yd[2],
            sh, sw, pt, pb, pl, pr, nthr};
    auto conv = Get(key);
    auto& eng = Engine();
    dnnl::stream s(eng);
    memory k_user(conv->wei_user, eng, k);
    memory k_prim = conv->wei_reorder ? memory(conv->wei_prim, eng) : k_user;
    size_t kbytes = conv->wei_prim.get_size();
    int64_t xstep = slice * xd[1] * xd[2] * xd[3], ystep = slice * yd[1] * yd[2] * yd[3];
    if (kind != kBwdWeights && conv->wei_reorder) {
      conv->wei_r.execute(s, k_user, k_prim);
      s.wait();
    }
    void* kp = k_prim.get_data_handle();
    if (pieces == 0) {
      Exec(*conv, kind, x, kp, y, n, xd, yd);
    } else {
      std::vector<float> partial;  // bwd weights: one kernel-sized sum per slice
      if (kind == kBwdWeights) partial.resize(pieces * kbytes / sizeof(float));
      auto err = Parallel(pool, pieces, [&](int64_t i) {
        omp_set_num_threads(1);
        void* ki = kind == kBwdWeights ? partial.data() + i * kbytes / sizeof(float) : kp;
        Exec(*conv, kind, x + i * xstep, ki, y + i * ystep, slice, xd, yd);
      });
      if (!err.empty()) throw std::runtime_error(err);
      if (kind == kBwdWeights) {
        size_t m = kbytes / sizeof(float);
        float* out = static_cast<float*>(kp);
        for (size_t j = 0; j < m; ++j) {
          float acc = partial[j];
          for (int64_t i = 1; i < pieces; ++i) acc += partial[i * m + j];
          out[j] = acc;
        }
      }
    }
    if (kind == kBwdWeights && conv->wei_reorder) {
      conv->wei_r.execute(s, k_prim, k_user);
      s.wait();
    }
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("onednn_conv: ") + e.what());
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Ret = ffi::ResultBuffer<ffi::F32>;

ffi::Error FwdImpl(F32 x, F32 k, F32Ret y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                   int64_t pl, int64_t pr, int64_t pieces, ffi::ThreadPool pool) {
  return Run(kFwd, x.typed_data(), k.typed_data(), y->typed_data(), x.dimensions(),
             k.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr, pieces, pool);
}

ffi::Error BwdDataImpl(F32 g, F32 k, F32Ret dx, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                       int64_t pl, int64_t pr, int64_t pieces, ffi::ThreadPool pool) {
  return Run(kBwdData, dx->typed_data(), k.typed_data(), g.typed_data(), dx->dimensions(),
             k.dimensions(), g.dimensions(), sh, sw, pt, pb, pl, pr, pieces, pool);
}

ffi::Error BwdWeightsImpl(F32 x, F32 g, F32Ret dk, int64_t sh, int64_t sw, int64_t pt,
                          int64_t pb, int64_t pl, int64_t pr, int64_t pieces,
                          ffi::ThreadPool pool) {
  return Run(kBwdWeights, x.typed_data(), dk->typed_data(), g.typed_data(), x.dimensions(),
             dk->dimensions(), g.dimensions(), sh, sw, pt, pb, pl, pr, pieces, pool);
}

#define CONV_ATTRS                                                                    \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb") \
      .Attr<int64_t>("pl").Attr<int64_t>("pr").Attr<int64_t>("pieces").Ctx<ffi::ThreadPool>()

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvFwd, FwdImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdData, BwdDataImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdWeights, BwdWeightsImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() CONV_ATTRS);

// Which implementation oneDNN picked for a shape (for benchmarks and debugging).
extern "C" int OnednnConvImplInfo(int64_t kind, const int64_t* key16, char* out, int64_t n) {
  try {
    Key key;
    key[0] = kind;
    for (int i = 0; i < 16; ++i) key[i + 1] = key16[i];
    omp_set_num_threads(static_cast<int>(key[16]));
    auto conv = Get(key);
    snprintf(out, n, "%s", conv->impl.c_str());
    return 0;
  } catch (const std::exception& e) {
    snprintf(out, n, "%s", e.what());
    return 1;
  }
}
