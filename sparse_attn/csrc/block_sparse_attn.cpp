// Block-sparse attention forward pass for the CPU (fp32), called from sparse_attn/cpu_kernel.py.
//
// Why a kernel of our own: each query block only meets a few 64x64 key tiles, so the work comes in
// pieces far too small for one PyTorch call each, and gathering the selected keys first costs as much
// memory traffic as the arithmetic saves. Here one task computes one query block from start to end with
// FlashAttention-2's online softmax, keeping its tiles in the core's caches; OpenMP threads share out the
// tasks.
//
// The code uses GCC/Clang vector extensions as wide as the machine's vector registers (VL), with
// AVX-512 intrinsics in two hot spots and a register tile sized per instruction set (TILE_NV), and is
// built once per machine with -O3 -march=native.
//
// Layouts, prepared by cpu_kernel.py (BH = batch*heads, all row-major, fp32):
//   q      [BH, Nq*BQ, D]   queries, pre-multiplied by softmax_scale*log2(e), so exp2 gives the softmax
//   kt     [BH, Nk, D, BK]  keys, block after block, each block transposed (a key per column)
//   v      [BH, Nk*BK, D]   values
//   kv_num [BH, Nq] int32 and kv_idx [BH, Nq, W] int32: the block index (see sparse_attn/blocks.py)
//   out    [BH, Nq*BQ, D] and lse [BH, Nq*BQ] (natural log); a row that attends nothing gets 0 and -inf
// BQ is even, D and BK are multiples of 16; padding rows/columns are zero and keys at or past kv_len are
// masked. Denormals are flushed to zero while the kernel runs (values below 1e-38 count as 0).
//
// PISA's tail (accel_pisa_attention): after the selected blocks, the same online softmax takes one more
// step over the Nk block means, the selected blocks masked out: block j adds 2^(q.kbar_j + log2 B_j)
// to the normaliser and that weight times the block's mean value to the output (its value sum, zeroth
// order); with `qh` (s q.h-bar per row, first order) the output also gains qh times the tail's weight.
//   kbt [BH, D, NKP]  block means transposed (NKP = Nk rounded up to 64), vbar [BH, NKP, D] mean values,
//   bias [NKP]        log2 of each block's real key count, -inf for the padding columns,
//   qh  [BH, Nq*BQ, D] or null.
//
// AdaSpa's block mass (accel_block_mass): for every (query block, key block) the sum over its rows and
// keys of 2^(q.k - lse2), lse2 [BH, Nq*BQ] being each row's log-sum-exp in log2 units (+inf for rows
// that must not count); written to sums [BH, Nq, Nk]. The same tiles as the attention, without P.V.

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <immintrin.h>
#endif

namespace {

// ---- vectors of one register's width --------------------------------------------------------------

// VL floats = one vector register: 16 with AVX-512, 8 with AVX/AVX2, 4 otherwise (SSE, NEON). Vectors
// wider than the machine's registers would be split by the compiler into poor code (broadcasts built
// lane by lane, every accumulator spilled), so the width follows the target. Layouts stay padded to
// multiples of 16 floats, a whole number of vectors for every width.
#if defined(__AVX512F__)
constexpr int VL = 16;
#elif defined(__AVX__)
constexpr int VL = 8;
#else
constexpr int VL = 4;
#endif
typedef float vf __attribute__((vector_size(VL * sizeof(float)), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t)), aligned(4)));

inline vf load(const float *p) { return *(const vf *)p; }
inline void store(float *p, vf x) { *(vf *)p = x; }
inline vf splat(float x) { return vf{} + x; }

// Broadcast one float from memory. On AVX-512 this must become a memory operand of the FMA, not a
// register shuffle: shuffles share the execution port with the multiply-adds.
inline vf broadcast(const float *p) {
#if defined(__AVX512F__)
    return (vf)_mm512_set1_ps(*p);
#else
    return splat(*p);
#endif
}

inline float hmax(vf x) {
    float m = x[0];
    for (int i = 1; i < VL; i++) m = x[i] > m ? x[i] : m;
    return m;
}

inline float hsum(vf x) {
    float s = 0.f;
    for (int i = 0; i < VL; i++) s += x[i];
    return s;
}

// 2^x for x <= 0 (and 0 for -inf). Round to nearest splits x = n + f with |f| <= 1/2; 2^f is its
// degree-7 Taylor polynomial (relative error < 1e-7); 2^n is applied through the exponent bits.
inline vf exp2_neg(vf x) {
    const vf lowest = splat(-127.f);  // below it the result is denormal (flushed) or zero anyway
    x = x < lowest ? lowest : x;
#if defined(__AVX512F__)
    const vf n = (vf)_mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    const vf shifter = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
    const vf n = (x + shifter) - shifter;
#endif
    const vf f = x - n;
    vf p = splat(1.5252734e-5f);
    p = p * f + 1.5403530e-4f;
    p = p * f + 1.3333558e-3f;
    p = p * f + 9.6181291e-3f;
    p = p * f + 5.5504109e-2f;
    p = p * f + 2.4022651e-1f;
    p = p * f + 6.9314718e-1f;
    p = p * f + 1.f;
#if defined(__AVX512F__)
    return (vf)_mm512_scalef_ps((__m512)p, (__m512)n);  // p * 2^n, flushed to 0 below 2^-126
#else
    const vi keep = n > -127.f;
    const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    return keep ? p * (vf)bits : vf{};
#endif
}

// ---- matrix multiply on cached tiles --------------------------------------------------------------

// The micro-kernel: C[R, NV*VL] (+)= A[R, K] . B[K, NV*VL] with C held in R*NV registers. Each step of
// k loads NV vectors of B's row k and multiplies them by A[r, k] broadcast, for the R rows.
template <int R, int NV, bool ACCUMULATE>
inline __attribute__((always_inline)) void micro_kernel(int K, const float *A, int lda, const float *B, int ldb,
                                                        float *C, int ldc) {
    vf c[R][NV];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int j = 0; j < NV; j++) c[r][j] = ACCUMULATE ? load(C + r * ldc + j * VL) : vf{};
    for (int k = 0; k < K; k++) {
        vf b[NV];
#pragma GCC unroll 8
        for (int j = 0; j < NV; j++) b[j] = load(B + k * ldb + j * VL);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const vf a = broadcast(A + r * lda + k);
#pragma GCC unroll 8
            for (int j = 0; j < NV; j++) c[r][j] += a * b[j];
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int j = 0; j < NV; j++) store(C + r * ldc + j * VL, c[r][j]);
}

template <int R, bool ACCUMULATE>
inline void tile(int nv, int K, const float *A, int lda, const float *B, int ldb, float *C, int ldc) {
    if (nv == 4) micro_kernel<R, 4, ACCUMULATE>(K, A, lda, B, ldb, C, ldc);
    else if (nv == 3) micro_kernel<R, 3, ACCUMULATE>(K, A, lda, B, ldb, C, ldc);
    else if (nv == 2) micro_kernel<R, 2, ACCUMULATE>(K, A, lda, B, ldb, C, ldc);
    else micro_kernel<R, 1, ACCUMULATE>(K, A, lda, B, ldb, C, ldc);
}

// The register tile: 6 rows x TILE_NV vectors of C stay in registers while K streams past. AVX-512:
// 6 x 64 columns, 24 accumulators plus 4 loaded vectors in the 32 zmm registers. Otherwise 6 x 2
// vectors: 12 accumulators, 2 loaded vectors and a broadcast in 16 registers (AVX2's ymm, SSE's xmm).
#if defined(__AVX512F__)
constexpr int TILE_NV = 4;
#else
constexpr int TILE_NV = 2;
#endif

// C[M, N] (+)= A[M, K] . B[K, N] in register tiles of 6 rows x TILE_NV*VL columns (the last 4 or 2
// rows of an even M use smaller tiles; N is a multiple of 16). Meanwhile `next`, the block the caller
// needs after this one (`next_bytes` long), is prefetched into L2 a slice per tile, so its trip from
// memory overlaps this block's arithmetic.
template <bool ACCUMULATE>
void matmul(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C, int ldc,
            const float *next, int next_bytes) {
    const int tiles = (M + 5) / 6 * ((N + TILE_NV * VL - 1) / (TILE_NV * VL));
    const char *pf = (const char *)next, *pf_end = pf + (next ? next_bytes : 0);
    const int pf_step = (next_bytes / 64 + tiles - 1) / tiles * 64;
    for (int col = 0; col < N; col += TILE_NV * VL) {
        const int nv = N - col >= TILE_NV * VL ? TILE_NV : (N - col) / VL;
        for (int row = 0; row < M;) {
            for (const char *stop = pf + pf_step; pf < stop && pf < pf_end; pf += 64) __builtin_prefetch(pf, 0, 2);
            const int rows = M - row >= 6 ? 6 : M - row;
            const float *a = A + row * lda;
            float *c = C + row * ldc + col;
            if (rows == 6) tile<6, ACCUMULATE>(nv, K, a, lda, B + col, ldb, c, ldc);
            else if (rows == 4) tile<4, ACCUMULATE>(nv, K, a, lda, B + col, ldb, c, ldc);
            else tile<2, ACCUMULATE>(nv, K, a, lda, B + col, ldb, c, ldc);
            row += rows;
        }
    }
}

// ---- one query block ------------------------------------------------------------------------------

constexpr int GROUP = 8;  // key blocks per softmax step: amortises the per-row bookkeeping

struct Shape {
    int64_t bh, q_blocks, kv_blocks, width, q_block, kv_block, dim, kv_len;
};

struct Tail {  // PISA's approximated blocks; kbt == nullptr: none
    const float *kbt, *vbar, *bias, *qh;
    int64_t nkp;
};

struct Scratch {  // per worker thread
    float *S;    // scores, then probabilities [BQ, max(GROUP*BK, NKP)]
    float *acc;  // unnormalised output [BQ, D]
    float *m;    // running row max (log2 units) [BQ]
    float *l;    // running row sum of 2^(s - m) [BQ]
    float *added;  // the tail step's share of l [BQ]
};

// One online-softmax step over the scores S[:, :width] (log2 units), row by row: update the row max, turn
// the scores into P = 2^(S - max), rescale the earlier sum and output. `added`, if given, receives each
// row's sum of P (the step's own share of the normaliser, at the new max).
void softmax_step(float *S, int ldS, int width, int BQ, int D, float *m, float *l, float *acc, float *added) {
    for (int r = 0; r < BQ; r++) {
        float *s = S + r * ldS;
        vf mx = load(s);
        for (int c = VL; c < width; c += VL) {
            const vf x = load(s + c);
            mx = x > mx ? x : mx;
        }
        const float group_max = hmax(mx);
        const float m_new = group_max > m[r] ? group_max : m[r];
        if (m_new == -INFINITY) {  // no key seen yet in this row: P = 0
            for (int c = 0; c < width; c += VL) store(s + c, vf{});
            if (added) added[r] = 0.f;
            continue;
        }
        const vf mv = splat(m_new);
        vf sum = vf{};
        for (int c = 0; c < width; c += VL) {
            const vf p = exp2_neg(load(s + c) - mv);
            store(s + c, p);
            sum += p;
        }
        const float alpha = exp2f(m[r] - m_new);  // rescales the earlier steps; 0 for the first
        const float step_sum = hsum(sum);
        l[r] = l[r] * alpha + step_sum;
        if (added) added[r] = step_sum;
        if (alpha != 1.f) {
            const vf av = splat(alpha);
            for (int c = 0; c < D; c += VL) store(acc + r * D + c, load(acc + r * D + c) * av);
        }
        m[r] = m_new;
    }
}

// PISA's tail step for one query block: scores against all block means plus log2 counts, the selected
// blocks masked, one softmax step, then acc += P . vbar (+ first order: acc += sum(P) * qh).
void tail_step(const Tail &tail, int64_t bh, int64_t task, const float *qt, const int32_t *ids, int n, int BQ,
               int D, float *S, float *m, float *l, float *acc, float *added) {
    const int NKP = (int)tail.nkp;
    matmul<false>(BQ, NKP, D, qt, D, tail.kbt + bh * D * NKP, NKP, S, NKP, nullptr, 0);
    for (int r = 0; r < BQ; r++) {
        float *s = S + r * NKP;
        for (int c = 0; c < NKP; c += VL) store(s + c, load(s + c) + load(tail.bias + c));
        for (int u = 0; u < n; u++) s[ids[u]] = -INFINITY;  // computed exactly already
    }
    softmax_step(S, NKP, NKP, BQ, D, m, l, acc, added);
    matmul<true>(BQ, D, NKP, S, NKP, tail.vbar + bh * NKP * D, D, acc, D, nullptr, 0);
    if (tail.qh) {
        const float *qh = tail.qh + task * BQ * D;
        for (int r = 0; r < BQ; r++) {
            const vf w = splat(added[r]);
            for (int c = 0; c < D; c += VL) store(acc + r * D + c, load(acc + r * D + c) + w * load(qh + r * D + c));
        }
    }
}

// Stream over the query block's key blocks GROUP at a time: S = Q.K^T for the group, online softmax
// (update the row max, P = 2^(S - max), rescale the earlier sum and output), acc += P.V.
void query_block(const Shape &sh, int64_t task, const float *q, const float *kt, const float *v,
                 const int32_t *kv_num, const int32_t *kv_idx, float *out, float *lse, const Scratch &w,
                 const Tail &tail) {
    const int BQ = (int)sh.q_block, BK = (int)sh.kv_block, D = (int)sh.dim;
    const int ldS = GROUP * BK;
    const int64_t bh = task / sh.q_blocks;
    const int last_keys = (int)(sh.kv_len - (sh.kv_blocks - 1) * BK);  // real keys in the last block
    const int block_bytes = (int)sizeof(float) * BK * D;
    const float *qt = q + task * BQ * D;
    const int32_t *ids = kv_idx + task * sh.width;
    const int n = kv_num[task];
    float *S = w.S, *acc = w.acc, *m = w.m, *l = w.l;

    for (int r = 0; r < BQ; r++) m[r] = -INFINITY, l[r] = 0.f;
    memset(acc, 0, sizeof(float) * BQ * D);

    for (int t0 = 0; t0 < n; t0 += GROUP) {
        const int g = n - t0 < GROUP ? n - t0 : GROUP;
        // The blocks in the order this group reads them: the keys of each block, its values, then the
        // next group's first keys. Each matmul prefetches the block after its own in this list.
        const float *order[2 * GROUP + 1];
        for (int u = 0; u < g; u++) {
            order[u] = kt + (bh * sh.kv_blocks + ids[t0 + u]) * BK * D;
            order[g + u] = v + (bh * sh.kv_blocks + ids[t0 + u]) * BK * D;
        }
        order[2 * g] = t0 + g < n ? kt + (bh * sh.kv_blocks + ids[t0 + g]) * BK * D : nullptr;

        // S[:, u*BK:(u+1)*BK] = Q . K^T for each block u (in log2 units: q carries log2(e))
        for (int u = 0; u < g; u++) {
            matmul<false>(BQ, BK, D, qt, D, order[u], BK, S + u * BK, ldS, order[u + 1], block_bytes);
            if (ids[t0 + u] == sh.kv_blocks - 1 && last_keys < BK)  // keys past kv_len do not exist
                for (int r = 0; r < BQ; r++)
                    for (int c = last_keys; c < BK; c++) S[r * ldS + u * BK + c] = -INFINITY;
        }

        softmax_step(S, ldS, g * BK, BQ, D, m, l, acc, nullptr);

        // acc += P[:, u*BK:(u+1)*BK] . V_u, block by block (each V block stays in L1 for all rows)
        for (int u = 0; u < g; u++)
            matmul<true>(BQ, D, BK, S + u * BK, ldS, order[g + u], D, acc, D, order[g + u + 1], block_bytes);
    }

    if (tail.kbt) tail_step(tail, bh, task, qt, ids, n, BQ, D, S, m, l, acc, w.added);

    // out = acc / l; lse = (m + log2 l) * ln 2. A row without keys: 0 and -inf.
    float *o = out + task * BQ * D;
    float *ls = lse + task * BQ;
    for (int r = 0; r < BQ; r++) {
        if (l[r] > 0.f) {
            const vf inv = splat(1.f / l[r]);
            for (int c = 0; c < D; c += VL) store(o + r * D + c, load(acc + r * D + c) * inv);
            ls[r] = (m[r] + log2f(l[r])) * 0.69314718055994531f;
        } else {
            memset(o + r * D, 0, sizeof(float) * D);
            ls[r] = -INFINITY;
        }
    }
}

// One query block's row of block sums: S = Q.K_j^T tile by tile, then sum 2^(S - lse2) over the tile.
void mass_block(const Shape &sh, int64_t task, const float *q, const float *kt, const float *lse2, float *sums,
                float *S) {
    const int BQ = (int)sh.q_block, BK = (int)sh.kv_block, D = (int)sh.dim;
    const int64_t bh = task / sh.q_blocks;
    const int last_keys = (int)(sh.kv_len - (sh.kv_blocks - 1) * BK);
    const int block_bytes = (int)sizeof(float) * BK * D;
    const float *qt = q + task * BQ * D;
    const float *ls = lse2 + task * BQ;
    const vf highest = splat(64.f);  // a stale LSE may sit below some scores; keep 2^x finite
    for (int64_t j = 0; j < sh.kv_blocks; j++) {
        const float *kj = kt + (bh * sh.kv_blocks + j) * BK * D;
        const float *next = j + 1 < sh.kv_blocks ? kj + BK * D : nullptr;
        matmul<false>(BQ, BK, D, qt, D, kj, BK, S, BK, next, block_bytes);
        const int keys = j == sh.kv_blocks - 1 ? last_keys : BK;
        vf total = vf{};
        for (int r = 0; r < BQ; r++) {
            const vf lv = splat(ls[r]);
            float *s = S + r * BK;
            for (int c = keys; c < BK; c++) s[c] = -INFINITY;  // keys past kv_len do not exist
            for (int c = 0; c < BK; c += VL) {
                vf x = load(s + c) - lv;
                x = x > highest ? highest : x;
                total += exp2_neg(x);
            }
        }
        sums[task * sh.kv_blocks + j] = hsum(total);
    }
}

// All tasks (one per (batch*head, query block)) over `threads` OpenMP threads. Built with -fopenmp, this
// joins the OpenMP runtime PyTorch already loaded (libgomp), so it shares PyTorch's worker threads
// instead of competing with them. Returns 1 if a thread cannot allocate its scratch memory.
int run(const Shape &sh, const Tail &tail, const float *q, const float *kt, const float *v, const int32_t *kv_num,
        const int32_t *kv_idx, float *out, float *lse, int64_t threads) {
    const int64_t width = GROUP * sh.kv_block > tail.nkp ? GROUP * sh.kv_block : tail.nkp;
    const size_t floats = sh.q_block * width + sh.q_block * sh.dim + 3 * sh.q_block;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *buffer = (float *)aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
        if (!buffer) {
#pragma omp atomic write
            failed = 1;
        }
        float *rows = buffer + sh.q_block * (width + sh.dim);  // m, l, added
        const Scratch scratch{buffer, buffer + sh.q_block * width, rows, rows + sh.q_block, rows + 2 * sh.q_block};
#if defined(__SSE__)
        const unsigned csr = _mm_getcsr();
        _mm_setcsr(csr | 0x8040);  // flush-to-zero and denormals-are-zero: denormals would stall the FMAs
#endif
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < sh.bh * sh.q_blocks; task++)
            if (buffer) query_block(sh, task, q, kt, v, kv_num, kv_idx, out, lse, scratch, tail);
#if defined(__SSE__)
        _mm_setcsr(csr);
#endif
        free(buffer);
    }
    return failed;
}

}  // namespace

extern "C" {

int accel_block_sparse_attention(const float *q, const float *kt, const float *v, const int32_t *kv_num,
                                 const int32_t *kv_idx, float *out, float *lse, int64_t bh, int64_t q_blocks,
                                 int64_t kv_blocks, int64_t width, int64_t q_block, int64_t kv_block, int64_t dim,
                                 int64_t kv_len, int64_t threads) {
    const Shape sh{bh, q_blocks, kv_blocks, width, q_block, kv_block, dim, kv_len};
    return run(sh, Tail{nullptr, nullptr, nullptr, nullptr, 0}, q, kt, v, kv_num, kv_idx, out, lse, threads);
}

int accel_pisa_attention(const float *q, const float *kt, const float *v, const int32_t *kv_num,
                         const int32_t *kv_idx, float *out, float *lse, const float *kbt, const float *vbar,
                         const float *bias, const float *qh, int64_t bh, int64_t q_blocks, int64_t kv_blocks,
                         int64_t width, int64_t q_block, int64_t kv_block, int64_t dim, int64_t kv_len, int64_t nkp,
                         int64_t threads) {
    const Shape sh{bh, q_blocks, kv_blocks, width, q_block, kv_block, dim, kv_len};
    return run(sh, Tail{kbt, vbar, bias, qh, nkp}, q, kt, v, kv_num, kv_idx, out, lse, threads);
}

int accel_block_mass(const float *q, const float *kt, const float *lse2, float *sums, int64_t bh, int64_t q_blocks,
                     int64_t kv_blocks, int64_t q_block, int64_t kv_block, int64_t dim, int64_t kv_len,
                     int64_t threads) {
    const Shape sh{bh, q_blocks, kv_blocks, 0, q_block, kv_block, dim, kv_len};
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *S = (float *)aligned_alloc(64, (q_block * kv_block * sizeof(float) + 63) / 64 * 64);
        if (!S) {
#pragma omp atomic write
            failed = 1;
        }
#if defined(__SSE__)
        const unsigned csr = _mm_getcsr();
        _mm_setcsr(csr | 0x8040);
#endif
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < bh * q_blocks; task++)
            if (S) mass_block(sh, task, q, kt, lse2, sums, S);
#if defined(__SSE__)
        _mm_setcsr(csr);
#endif
        free(S);
    }
    return failed;
}

}  // extern "C"
