// Model merging over a stack of N inputs of n values each, x (N, n): the task vectors (or weights) of
// one tensor of every input model. The merge streams tensor by tensor, so n is one tensor's size.
//
// merge_combine:  out[j] = the merged value at j, by p.mode:
//   SUM    Σ_i c_i x_ij
//   TIES   s_ij = c_i x_ij with SIGN_WEIGHTED (mergekit) else x_ij (PEFT); score_j = Σ_i s_ij (total) or
//          Σ_i sign(s_ij) (FREQUENCY); elected_j = +1 where score_j >= 0 else -1;
//          keep_ij = sign(s_ij) == elected_j (pruned zeros never kept); out = Σ_i keep_ij c_i x_ij
//          ÷ max(Σ_i keep_ij, 1) with DIV_COUNT (PEFT) or ÷ Σ_i keep_ij c_i with DIV_WEIGHT_MASK (mergekit's
//          normalize; a zero divisor counts as 1)
//   FISHER f_ij = max(aux_ij, p.scale) (the floor); out = Σ_i c_i f_ij x_ij / Σ_i c_i f_ij
//   DELTA  a_ij = c_i |x_ij - base_j|^(1 / p.scale) (p.scale the temperature); out = Σ_i a_ij x_ij / Σ_i a_ij,
//          the plain c-weighted average where every input equals the base
// merge_hist / merge_select: one radix-select pass (8 bits from p.shift) towards the bits of the k-th
//   largest |x_i| of every input: merge_hist counts, per input, the values whose higher bits match the
//   prefix found so far; merge_select (one workgroup per input) picks the bin holding the k-th and
//   clears the histogram for the next pass. Four passes give the exact bit pattern. |x| of an f32 is
//   ordered like its bits read as u32.
// merge_trim:     x_ij = 0 unless lo_i <= bits(|x_ij|) (and bits(|x_ij|) < hi_i with HAS_HI), in place;
//                 lo and hi are merge_select's (N, 2) state, bit patterns in column 0
// merge_dare:     x_ij = 0 unless u(seed_i, j) < q, q = prob_i (or prob_ij with PER_ELEMENT);
//                 kept values ÷ q with RESCALE. u from the shared hash, the same on the CPU device.
// merge_rank:     prob_ij = d_i - e_i + 2 e_i · rank_j / (cols - 1) over each row of `cols` values
//                 (d, e: each input's density and epsilon), rank_j the position of |x_ij| in its row in ascending order (ties by index):
//                 DELLA's keep probabilities (density ± epsilon)
// merge_dots:     partial sums over blocks of 4096 values of x_a · x_b (or Σ |x_a| with ABS) for each
//                 (a, b) in `pairs`; the host adds the partials in f64
// merge_scale:    x_ij *= num_i / den_i where den_i > 0, in place (DARE's 1/density; L1-norm matching)

const MODE_SUM: u32 = 0u;
const MODE_TIES: u32 = 1u;
const MODE_FISHER: u32 = 2u;
const MODE_DELTA: u32 = 3u;

const FREQUENCY: u32 = 1u;
const SIGN_WEIGHTED: u32 = 2u;
const DIV_COUNT: u32 = 4u;
const DIV_WEIGHT_MASK: u32 = 8u;
const HAS_HI: u32 = 16u;
const PER_ELEMENT: u32 = 32u;
const RESCALE: u32 = 64u;
const ABS: u32 = 128u;

struct Params {
    n: u32, inputs: u32, mode: u32, flags: u32,
    shift: u32, seed: u32, scale: f32, aux: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

// merge_combine bindings
@group(0) @binding(1) var<storage, read> cx: array<f32>;          // (N, n)
@group(0) @binding(2) var<storage, read> coef: array<f32>;        // (N)
@group(0) @binding(3) var<storage, read> aux: array<f32>;         // (N, n) Fisher; else unused
@group(0) @binding(4) var<storage, read> base: array<f32>;        // (n) DELTA; else unused
@group(0) @binding(5) var<storage, read_write> out: array<f32>;   // (n)

// The invocation's first index and the stride of a grid-stride loop over n values.
fn stride_start(wid: vec3<u32>, lid: vec3<u32>) -> u32 {
    return wid.x * 256u + lid.x;
}
fn stride_step(nwg: vec3<u32>) -> u32 {
    return nwg.x * 256u;
}

fn sgn(v: f32) -> f32 {
    return select(select(0.0, -1.0, v < 0.0), 1.0, v > 0.0);
}

fn combine_at(j: u32) -> f32 {
    let n = p.n;
    var num = 0.0;
    var den = 0.0;
    switch p.mode {
        case MODE_TIES: {
            var score = 0.0;
            for (var i = 0u; i < p.inputs; i = i + 1u) {
                var s = cx[i * n + j];
                if ((p.flags & SIGN_WEIGHTED) != 0u) { s = s * coef[i]; }
                score = score + select(s, sgn(s), (p.flags & FREQUENCY) != 0u);
            }
            let elected = select(-1.0, 1.0, score >= 0.0);
            for (var i = 0u; i < p.inputs; i = i + 1u) {
                let v = cx[i * n + j];
                var s = v;
                if ((p.flags & SIGN_WEIGHTED) != 0u) { s = s * coef[i]; }
                if (sgn(s) == elected) {
                    num = num + coef[i] * v;
                    den = den + select(1.0, coef[i], (p.flags & DIV_WEIGHT_MASK) != 0u);
                }
            }
            if ((p.flags & DIV_COUNT) != 0u) { return num / max(den, 1.0); }
            if ((p.flags & DIV_WEIGHT_MASK) != 0u) { return num / select(den, 1.0, den == 0.0); }
            return num;
        }
        case MODE_FISHER: {
            for (var i = 0u; i < p.inputs; i = i + 1u) {
                let f = coef[i] * max(aux[i * n + j], p.scale);
                num = num + f * cx[i * n + j];
                den = den + f;
            }
            return num / den;
        }
        case MODE_DELTA: {
            var plain = 0.0;
            var plain_den = 0.0;
            for (var i = 0u; i < p.inputs; i = i + 1u) {
                let v = cx[i * n + j];
                let a = coef[i] * pow(abs(v - base[j]), 1.0 / p.scale);
                num = num + a * v;
                den = den + a;
                plain = plain + coef[i] * v;
                plain_den = plain_den + coef[i];
            }
            if (den > 0.0) { return num / den; }
            return plain / plain_den;
        }
        default: {
            for (var i = 0u; i < p.inputs; i = i + 1u) {
                num = num + coef[i] * cx[i * n + j];
            }
            return num;
        }
    }
}

@compute @workgroup_size(256, 1, 1)
fn merge_combine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    for (var j = stride_start(wid, lid); j < p.n; j = j + stride_step(nwg)) {
        out[j] = combine_at(j);
    }
}

// merge_hist bindings: the grid is (blocks, N)
@group(0) @binding(1) var<storage, read> hx: array<f32>;               // (N, n)
@group(0) @binding(2) var<storage, read> hstate: array<u32>;           // (N, 2): prefix, k remaining
@group(0) @binding(3) var<storage, read_write> hist: array<atomic<u32>>; // (N, 256)

var<workgroup> local_hist: array<atomic<u32>, 256>;

@compute @workgroup_size(256, 1, 1)
fn merge_hist(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = wid.y;
    atomicStore(&local_hist[lid.x], 0u);
    workgroupBarrier();
    let prefix = hstate[i * 2u];
    // The bits above this pass's 8 are decided; shift 24 is the first pass.
    let high = select(0xffffffffu << (p.shift + 8u), 0u, p.shift == 24u);
    for (var j = stride_start(wid, lid); j < p.n; j = j + stride_step(nwg)) {
        let bits = bitcast<u32>(abs(hx[i * p.n + j]));
        if ((bits & high) == (prefix & high)) {
            atomicAdd(&local_hist[(bits >> p.shift) & 255u], 1u);
        }
    }
    workgroupBarrier();
    let c = atomicLoad(&local_hist[lid.x]);
    if (c != 0u) { atomicAdd(&hist[i * 256u + lid.x], c); }
}

// merge_select bindings: one workgroup per input
@group(0) @binding(1) var<storage, read_write> sstate: array<u32>;     // (N, 2)
@group(0) @binding(2) var<storage, read_write> shist: array<u32>;      // (N, 256)

@compute @workgroup_size(256, 1, 1)
fn merge_select(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = wid.x;
    if (lid.x == 0u) {
        var k = sstate[i * 2u + 1u];
        var b = 255u;
        loop {
            let c = shist[i * 256u + b];
            if (c >= k || b == 0u) { break; }
            k = k - c;
            b = b - 1u;
        }
        sstate[i * 2u] = sstate[i * 2u] | (b << p.shift);
        sstate[i * 2u + 1u] = k;
    }
    workgroupBarrier();
    shist[i * 256u + lid.x] = 0u;
}

// merge_trim bindings
@group(0) @binding(1) var<storage, read> lo: array<u32>;               // (N, 2): bit patterns in column 0
@group(0) @binding(2) var<storage, read> hi: array<u32>;               // (N, 2) with HAS_HI
@group(0) @binding(3) var<storage, read_write> tx: array<f32>;         // (N, n)

@compute @workgroup_size(256, 1, 1)
fn merge_trim(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = wid.y;
    for (var j = stride_start(wid, lid); j < p.n; j = j + stride_step(nwg)) {
        let bits = bitcast<u32>(abs(tx[i * p.n + j]));
        var keep = bits >= lo[i * 2u];
        if ((p.flags & HAS_HI) != 0u) { keep = keep && bits < hi[i * 2u]; }
        if (!keep) { tx[i * p.n + j] = 0.0; }
    }
}

// merge_dare bindings
@group(0) @binding(1) var<storage, read> prob: array<f32>;             // (N), or (N, n) with PER_ELEMENT
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;         // (N, n)

@compute @workgroup_size(256, 1, 1)
fn merge_dare(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = wid.y;
    let seed = hash(p.seed + i * 0x9e3779b9u);
    for (var j = stride_start(wid, lid); j < p.n; j = j + stride_step(nwg)) {
        let q = select(prob[i], prob[i * p.n + j], (p.flags & PER_ELEMENT) != 0u);
        let u = f32(hash(seed ^ hash(j)) >> 8u) * (1.0 / 16777216.0);
        let v = dx[i * p.n + j];
        var r = select(0.0, v, u < q);
        if ((p.flags & RESCALE) != 0u && u < q) { r = v / q; }
        dx[i * p.n + j] = r;
    }
}

// merge_rank bindings: p.n values per input, rows of p.shift values (cols), grid (rows, N)
@group(0) @binding(1) var<storage, read> rx: array<f32>;               // (N, n)
@group(0) @binding(2) var<storage, read> rdens: array<f32>;            // (N)
@group(0) @binding(3) var<storage, read> reps: array<f32>;             // (N)
@group(0) @binding(4) var<storage, read_write> rprob: array<f32>;      // (N, n)

var<workgroup> row_tile: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn merge_rank(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let cols = p.shift;
    let start = wid.y * p.n + wid.x * cols;
    // Each invocation ranks the values c = lid.x, lid.x + 256, … of the row against tiles of it.
    let per = (cols + 255u) / 256u;
    for (var q = 0u; q < per; q = q + 1u) {
        let c = q * 256u + lid.x;
        var mine = 0.0;
        if (c < cols) { mine = abs(rx[start + c]); }
        var rank = 0u;
        for (var t0 = 0u; t0 < cols; t0 = t0 + 256u) {
            workgroupBarrier();
            if (t0 + lid.x < cols) { row_tile[lid.x] = abs(rx[start + t0 + lid.x]); }
            workgroupBarrier();
            let m = min(256u, cols - t0);
            for (var s = 0u; s < m; s = s + 1u) {
                let o = row_tile[s];
                let d = t0 + s;
                if (o < mine || (o == mine && d < c)) { rank = rank + 1u; }
            }
        }
        if (c < cols) {
            let norm = select(f32(rank) / f32(cols - 1u), 0.0, cols == 1u);
            let e = reps[wid.y];
            rprob[start + c] = rdens[wid.y] - e + 2.0 * e * norm;
        }
    }
}

// merge_dots bindings: grid (blocks of 4096 values, pairs)
@group(0) @binding(1) var<storage, read> ox: array<f32>;               // (N, n)
@group(0) @binding(2) var<storage, read> pairs: array<u32>;            // (P, 2)
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;    // (P, blocks)

var<workgroup> red256: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn merge_dots(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let pair = wid.y;
    let a = pairs[pair * 2u];
    let b = pairs[pair * 2u + 1u];
    var s = 0.0;
    let first = wid.x * 4096u;
    for (var q = 0u; q < 16u; q = q + 1u) {
        let j = first + q * 256u + lid.x;
        if (j < p.n) {
            let u = ox[a * p.n + j];
            if ((p.flags & ABS) != 0u) { s = s + abs(u); } else { s = s + u * ox[b * p.n + j]; }
        }
    }
    red256[lid.x] = s;
    for (var k = 128u; k > 0u; k = k / 2u) {
        workgroupBarrier();
        if (lid.x < k) { red256[lid.x] = red256[lid.x] + red256[lid.x + k]; }
    }
    if (lid.x == 0u) { partial[pair * nwg.x + wid.x] = red256[0]; }
}

// merge_scale bindings
@group(0) @binding(1) var<storage, read> num: array<f32>;              // (N)
@group(0) @binding(2) var<storage, read> den: array<f32>;              // (N)
@group(0) @binding(3) var<storage, read_write> sx: array<f32>;         // (N, n)

@compute @workgroup_size(256, 1, 1)
fn merge_scale(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = wid.y;
    if (den[i] <= 0.0) { return; }
    let f = num[i] / den[i];
    for (var j = stride_start(wid, lid); j < p.n; j = j + stride_step(nwg)) {
        sx[i * p.n + j] = sx[i * p.n + j] * f;
    }
}
