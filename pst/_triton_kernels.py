"""The Triton kernels of ``pst.kernels`` (imported on first use: ``TRITON_INTERPRET`` is read
when they are defined, and triton is optional). Each works on a tile of rows x columns of the
n x k weight and sums in fp32."""
import triton
import triton.language as tl


@triton.jit
def updated_tile(W, sw0, sw1, U, V, rows, vrows, cols, inside, k, beta, RANK: tl.constexpr,
                 HAS_UPDATE: tl.constexpr):
    """W' = W + beta U V on a (rows, cols) tile, in fp32; ``vrows``: the first row of V per row."""
    w = tl.load(W + rows[:, None] * sw0 + cols[None, :] * sw1, mask=inside, other=0.0).to(tl.float32)
    if HAS_UPDATE:
        product = tl.zeros(w.shape, dtype=tl.float32)
        for r in tl.static_range(RANK):
            u = tl.load(U + rows * RANK + r).to(tl.float32)  # rows are clamped inside the weight
            v = tl.load(V + (vrows + r)[:, None] * k + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            product += u[:, None] * v
        w += beta * product
    return w


@triton.jit
def kept_tile(BITS, rows, cols, inside, k):
    """The mask on a tile, unpacked from its bits (bit i of byte j: entry 8 j + i)."""
    index = rows.to(tl.int64)[:, None] * k + cols[None, :]
    byte = tl.load(BITS + index // 8, mask=inside, other=0).to(tl.int32)
    return ((byte >> (index % 8).to(tl.int32)) & 1) != 0


@triton.jit
def first_factor_row(BLOCK_OF_ROW, rows, RANK: tl.constexpr, FUSED: tl.constexpr):
    """Each row's first row of V (blocks * r, k): its block's, in a fused layer."""
    if FUSED:
        return tl.load(BLOCK_OF_ROW + rows) * RANK
    return rows * 0


@triton.jit
def tile_indices(n, k, BM: tl.constexpr, BN: tl.constexpr):
    """This program's rows (clamped inside the weight, to be read without masks), columns, and
    which entries of the tile are inside the weight."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    inside = (rows[:, None] < n) & (cols[None, :] < k)
    return tl.where(rows < n, rows, 0), cols, inside


@triton.jit
def masked_update_kernel(OUT, W, sw0, sw1, U, V, BLOCK_OF_ROW, BITS, n, k, beta, RANK: tl.constexpr,
                         HAS_UPDATE: tl.constexpr, FUSED: tl.constexpr, HAS_MASK: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr):
    rows, cols, inside = tile_indices(n, k, BM, BN)
    vrows = first_factor_row(BLOCK_OF_ROW, rows, RANK, FUSED)
    w = updated_tile(W, sw0, sw1, U, V, rows, vrows, cols, inside, k, beta, RANK, HAS_UPDATE)
    if HAS_MASK:
        w = tl.where(kept_tile(BITS, rows, cols, inside, k), w, 0.0)
    tl.store(OUT + rows.to(tl.int64)[:, None] * k + cols[None, :], w.to(OUT.dtype.element_ty), mask=inside)


@triton.jit
def straight_through_kernel(G, UPDATED, SCORE, W, sw0, sw1, U, V, BLOCK_OF_ROW, BITS, n, k, beta,
                            RANK: tl.constexpr, HAS_UPDATE: tl.constexpr, FUSED: tl.constexpr,
                            HAS_MASK: tl.constexpr, NEED_UPDATED: tl.constexpr, NEED_SCORE: tl.constexpr,
                            MAGNITUDE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    rows, cols, inside = tile_indices(n, k, BM, BN)
    at = rows.to(tl.int64)[:, None] * k + cols[None, :]
    g = tl.load(G + at, mask=inside, other=0.0).to(tl.float32)
    if NEED_SCORE or MAGNITUDE:
        vrows = first_factor_row(BLOCK_OF_ROW, rows, RANK, FUSED)
        w = updated_tile(W, sw0, sw1, U, V, rows, vrows, cols, inside, k, beta, RANK, HAS_UPDATE)
        if NEED_SCORE:
            tl.store(SCORE + at, (w * g).to(SCORE.dtype.element_ty), mask=inside)
    if NEED_UPDATED:
        through = g
        if HAS_MASK:
            through = tl.where(kept_tile(BITS, rows, cols, inside, k), g, 0.0)
        if MAGNITUDE:  # sign(W') dL/dS = |W'| G
            through += tl.abs(w) * g
        tl.store(UPDATED + at, through.to(UPDATED.dtype.element_ty), mask=inside)


@triton.jit
def score_kernel(OUT, W, sw0, sw1, U, V, A, B, R, C, n, k, start, size, period, beta, alpha1, alpha2,
                 RANK: tl.constexpr, SCORE_RANK: tl.constexpr, MAGNITUDE: tl.constexpr,
                 HAS_UPDATE: tl.constexpr, HAS_LOW_RANK: tl.constexpr, HAS_STRUCTURED: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr):
    # ``rows`` run over the block's rows; ``whole`` are the same rows of the whole weight.
    rows, cols, inside = tile_indices(n, k, BM, BN)
    whole = (rows // size) * period + start + rows % size
    zero = rows * 0
    s = tl.zeros((BM, BN), dtype=tl.float32)
    if MAGNITUDE:
        s = tl.abs(updated_tile(W, sw0, sw1, U, V, whole, zero, cols, inside, k, beta, RANK, HAS_UPDATE))
    if HAS_LOW_RANK:
        product = tl.zeros((BM, BN), dtype=tl.float32)
        for r in tl.static_range(SCORE_RANK):
            a = tl.load(A + whole * SCORE_RANK + r).to(tl.float32)
            b = tl.load(B + r * k + cols, mask=cols < k, other=0.0).to(tl.float32)
            product += a[:, None] * b[None, :]
        s += alpha1 * product
    if HAS_STRUCTURED:
        per_row = tl.load(R + whole).to(tl.float32)
        per_column = tl.load(C + cols, mask=cols < k, other=0.0).to(tl.float32)
        s += alpha2 * (per_row[:, None] + per_column[None, :])
    tl.store(OUT + rows.to(tl.int64)[:, None] * k + cols[None, :], s.to(OUT.dtype.element_ty), mask=inside)


# -- the selection: one row of scores per program row, a tile of BN entries along it ------------
@triton.jit
def tie_count_kernel(S, THRESHOLD, BELOW, TIED, m, tiles, BN: tl.constexpr):
    """Per tile of each row: the entries below the row's threshold and those equal to it."""
    row, tile = tl.program_id(0), tl.program_id(1)
    cols = tile * BN + tl.arange(0, BN)
    inside = cols < m
    s = tl.load(S + row.to(tl.int64) * m + cols, mask=inside, other=0.0).to(tl.float32)  # exact from 16 bits
    threshold = tl.load(THRESHOLD + row).to(tl.float32)
    tl.store(BELOW + row * tiles + tile, tl.sum(((s < threshold) & inside).to(tl.int32), axis=0))
    tl.store(TIED + row * tiles + tile, tl.sum(((s == threshold) & inside).to(tl.int32), axis=0))


@triton.jit
def select_bits_kernel(S, THRESHOLD, STILL, TIED_BEFORE, OUT, m, tiles, nbytes, BN: tl.constexpr):
    """The keep-mask bits of a tile: prune what is below the threshold and the first ``still`` of
    the row's entries equal to it (``TIED_BEFORE``: those in earlier tiles); bit i of byte j is
    entry 8 j + i, and entries past the row's end are kept (padding, as ``pack_mask``)."""
    row, tile = tl.program_id(0), tl.program_id(1)
    cols = tile * BN + tl.arange(0, BN)
    inside = cols < m
    s = tl.load(S + row.to(tl.int64) * m + cols, mask=inside, other=0.0).to(tl.float32)  # exact from 16 bits
    threshold = tl.load(THRESHOLD + row).to(tl.float32)
    tied = (s == threshold) & inside
    rank = tl.load(TIED_BEFORE + row * tiles + tile) + tl.cumsum(tied.to(tl.int32), axis=0)
    pruned = ((s < threshold) & inside) | (tied & (rank <= tl.load(STILL + row)))
    keep = tl.where(pruned, 0, 1)
    byte = tl.sum(tl.reshape(keep, (BN // 8, 8)) << tl.arange(0, 8)[None, :], axis=1)
    at = tile * (BN // 8) + tl.arange(0, BN // 8)
    tl.store(OUT + row.to(tl.int64) * nbytes + at, byte.to(tl.uint8), mask=at < nbytes)
