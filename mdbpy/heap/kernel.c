/*
 * The inner loops of findleaks, compiled: which buffer holds each word of the heap, the edges
 * between buffers, and the breadth-first mark over them; and the one loop of the chunk walks
 * that cannot be vectorised, following a chain of headers.
 *
 * Why C: a conservative scan looks at every word of the heap (tens of millions of them). In
 * numpy that is a dozen passes over temporaries per block (range filter, island lookup,
 * granule index, the steps to the right buffer, the source lookup); here it is one pass over
 * words that are already in the cache, at about the speed of reading them.
 *
 * Plain C with no Python headers: mdbpy.heap.kernel loads it with ctypes (which releases the
 * GIL around each call, so the scan threads run in parallel). Every array comes from numpy and
 * is owned by the caller; nothing here allocates or keeps state between calls.
 *
 * The locator. Buffers are sorted by base and do not overlap. Consecutive buffers of one size
 * at one spacing form a run (a slab's objects: a million buffers are a few ten thousand runs),
 * and the index is built over the runs, small enough to stay in the CPU's caches while the
 * heap streams past. The runs' address range is grouped into islands (runs without a large gap
 * between them), and each island is cut into granules of 2**shift bytes; before[g] is the last
 * run that starts before granule g (-1 for none), with one extra entry after each island's
 * granules. The run containing v, if any, is the last one starting at or below v, which lies
 * between before[g] and before[g + 1] for v's granule g: a range of a run or two, searched by
 * bisection so a crowded granule costs a few steps more, never a wrong answer. Within the run,
 * v's buffer is found by a division.
 */
#include <stdint.h>
#include <string.h>

typedef struct {
    const uint64_t *base;   /* n buffer starts, sorted (the scan's source cursor) */
    const uint64_t *end;    /* n buffer ends */
    int64_t n;
    uint64_t lo, hi;        /* no value outside [lo, hi) is in a buffer */
    const uint64_t *rbase;  /* nruns run starts, sorted */
    const uint64_t *rend;   /* nruns run ends (past the last buffer's last byte) */
    const uint64_t *rstride; /* nruns buffer spacings */
    const uint64_t *rsize;  /* nruns buffer sizes */
    const int64_t *rfirst;  /* nruns first buffer indexes; all three NULL where each buffer
                             * is taken as its own run: nruns == n, rbase and rend are base
                             * and end */
    int64_t nruns;
    const uint64_t *ilo;    /* nisl island starts, sorted */
    const uint64_t *ihi;    /* nisl island ends */
    const int64_t *goff;    /* each island's first granule; nisl + 1 entries */
    int64_t nisl;
    uint64_t shift;
    const int32_t *before;  /* goff[nisl] entries */
} locator;

/* Cut a sorted table into runs: buffers i..j form one when they have one size and each starts
 * `stride` (at least that size) past the one before. Fills the run arrays (room for every run)
 * unless rbase is NULL (a first pass that only counts them, so that no n-sized array is made
 * where every buffer is its own run); returns the number of runs. */
int64_t loc_runs(const uint64_t *base, const uint64_t *end, int64_t n, uint64_t *rbase,
                 uint64_t *rend, uint64_t *rstride, uint64_t *rsize, int64_t *rfirst)
{
    int64_t r = -1, first = 0;
    uint64_t size_r = 0, stride_r = 1; /* run r's buffer size and spacing */
    for (int64_t i = 0; i < n; i++) {
        uint64_t size = end[i] - base[i];
        if (r >= 0 && size == size_r && i > first) {
            uint64_t step = base[i] - base[i - 1];
            int joins = i - first == 1 ? step >= size && step > 0 : step == stride_r;
            if (joins) {
                stride_r = step;
                if (rbase) {
                    rstride[r] = step;
                    rend[r] = end[i];
                }
                continue;
            }
        }
        r++;
        first = i;
        size_r = size;
        stride_r = size ? size : 1;
        if (rbase) {
            rbase[r] = base[i];
            rend[r] = end[i];
            rstride[r] = stride_r;
            rsize[r] = size;
            rfirst[r] = i;
        }
    }
    return r + 1;
}

/* Count the islands of sorted runs: a new one starts where a run begins more than `gap` bytes
 * past the furthest end so far. Fills first[] (each island's first run) and hi[] (its
 * furthest end); returns the number of islands. */
int64_t loc_islands(const uint64_t *base, const uint64_t *end, int64_t n, uint64_t gap,
                    int64_t *first, uint64_t *hi)
{
    int64_t k = -1;
    uint64_t reach = 0;
    for (int64_t i = 0; i < n; i++) {
        if (k < 0 || base[i] > reach + gap) {
            k++;
            first[k] = i;
            reach = end[i];
        } else if (end[i] > reach) {
            reach = end[i];
        }
        hi[k] = reach;
    }
    return k + 1;
}

/* Fill before[] for every island: its granules, then its closing entry at goff[k + 1] - 1
 * (goff has nisl + 1 entries). first[] holds each island's first run. */
void loc_fill(const locator *L, const int64_t *first, int32_t *before)
{
    for (int64_t k = 0; k < L->nisl; k++) {
        int64_t stop = k + 1 < L->nisl ? first[k + 1] : L->nruns;
        int64_t g = L->goff[k], close = L->goff[k + 1] - 1;
        for (int64_t i = first[k]; i < stop; i++) {
            int64_t gi = L->goff[k] + (int64_t)((L->rbase[i] - L->ilo[k]) >> L->shift);
            while (g <= gi && g < close) /* these granules start after run i - 1 */
                before[g++] = (int32_t)(i - 1);
        }
        while (g <= close)
            before[g++] = (int32_t)(stop - 1);
    }
}

/* The last i in [a, b] with sorted[i] <= v, given that a is -1 or sorted[a] <= v. */
static inline int64_t last_at_or_below(const uint64_t *sorted, int64_t a, int64_t b, uint64_t v)
{
    while (a < b) {
        int64_t m = (a + b + 1) >> 1;
        if (sorted[m] <= v)
            a = m;
        else
            b = m - 1;
    }
    return a;
}

/* The granule range [before[g], before[g + 1]] where the run holding v would be, or
 * (-1, -1) for a v outside every island; v is in [lo, hi). */
static inline void granule_range(const locator *L, uint64_t v, int32_t *a, int32_t *b)
{
    int64_t k = L->nisl > 1 ? last_at_or_below(L->ilo, 0, L->nisl - 1, v) : 0;
    if (v >= L->ihi[k]) {
        *a = *b = -1;
        return;
    }
    int64_t g = L->goff[k] + (int64_t)((v - L->ilo[k]) >> L->shift);
    *a = L->before[g];
    *b = L->before[g + 1];
}

/* The buffer of run r holding v (r may be -1), or -1: v may fall between two buffers. Where
 * each buffer is taken as its own run (a glibc heap) the runs are the buffers (rfirst is
 * NULL). */
static inline int64_t buffer_in_run(const locator *L, int64_t r, uint64_t v)
{
    if (r < 0 || v >= L->rend[r])
        return -1;
    if (!L->rfirst)
        return r;
    uint64_t off = v - L->rbase[r], k = off / L->rstride[r];
    return off - k * L->rstride[r] < L->rsize[r] ? L->rfirst[r] + (int64_t)k : -1;
}

#define CHUNK 1024 /* words located together: their index loads overlap in the CPU */
#define AHEAD_WORDS 256 /* how far ahead the scan prefetches (a prefetch never faults) */

/* Scan nwords words whose first is at address addr0.
 *
 * With src given (the edge scan), a hit is kept only when its slot lies in a buffer other than
 * the target: (src, dst) pairs, in slot order. The source is found by a cursor that only moves
 * forward, since the slots come in address order. Without src (a root range), every hit is
 * kept as (slot address, dst).
 *
 * The words go in chunks through stages rather than one at a time: the in-range words are
 * picked out first (most heap words are not pointers into it), then every pick's index entry
 * is loaded, then every pick's run. Within a stage the loads are independent, so the cache
 * misses of a million hits overlap instead of queueing.
 *
 * With at_in, word i is not at addr0 + 8 * i but at at_in[i] (ascending): the words a
 * one-pass scan picked out of blocks read before the table existed (pick_words).
 *
 * counts[0..3] += words, dismissals (outside [lo, hi)), misses (in range, in no buffer), hits.
 * The outputs must have room for nwords entries; returns how many were written. */
int64_t scan_words(const locator *L, const uint64_t *words, int64_t nwords, uint64_t addr0,
                   const uint64_t *at_in, int32_t *src, int32_t *dst, uint64_t *slot,
                   int64_t *counts)
{
    int32_t pick[CHUNK], a[CHUNK], b[CHUNK];
    int64_t out = 0, picked = 0, missed = 0;
    const uint64_t lo = L->lo, span = L->hi - L->lo;
    /* the source cursor: the last buffer starting at or below the slot */
    int64_t cur = src ? last_at_or_below(L->base, -1, L->n - 1, addr0) : -1;
    for (int64_t j0 = 0; j0 < nwords; j0 += CHUNK) {
        const uint64_t *w = words + j0;
        int64_t len = nwords - j0 < CHUNK ? nwords - j0 : CHUNK, m = 0;
        /* unsigned: below lo wraps to a huge value. Four words are tested together first:
         * most groups hold no candidate and cost one predictable branch. The words are
         * asked for AHEAD_WORDS ahead: the hardware's prefetcher stops at each 4 KB page,
         * and a core's heap is read in place from the page cache's 4 KB pages. */
        int64_t j = 0;
        for (; j + 4 <= len; j += 4) {
            if (!(j & 7))
                __builtin_prefetch(w + j + AHEAD_WORDS);
            if (!((w[j] - lo < span) | (w[j + 1] - lo < span) | (w[j + 2] - lo < span) |
                  (w[j + 3] - lo < span)))
                continue;
            for (int64_t q = j; q < j + 4; q++) {
                pick[m] = (int32_t)q;
                m += w[q] - lo < span;
            }
        }
        for (; j < len; j++) {
            pick[m] = (int32_t)j;
            m += w[j] - lo < span;
        }
        picked += m;
        for (int64_t i = 0; i < m; i++)
            granule_range(L, w[pick[i]], &a[i], &b[i]);
        for (int64_t i = 0; i < m; i++) {
            uint64_t v = w[pick[i]];
            a[i] = b[i] < 0 ? -1 : (int32_t)buffer_in_run(
                L, last_at_or_below(L->rbase, a[i], b[i], v), v);
        }
        for (int64_t i = 0; i < m; i++) {
            int64_t d = a[i];
            if (d < 0) {
                missed++;
                continue;
            }
            uint64_t at = at_in ? at_in[j0 + pick[i]] : addr0 + 8 * (uint64_t)(j0 + pick[i]);
            if (!src) {
                dst[out] = (int32_t)d;
                slot[out++] = at;
                continue;
            }
            while (cur + 1 < L->n && L->base[cur + 1] <= at)
                cur++;
            if (cur >= 0 && at < L->end[cur] && cur != d) {
                src[out] = (int32_t)cur;
                dst[out++] = (int32_t)d;
            }
        }
    }
    counts[0] += nwords;
    counts[1] += nwords - picked;
    counts[2] += missed;
    counts[3] += picked - missed;
    return out;
}

/* The words of a block (the first at addr0) whose values lie in [lo, hi), with their
 * addresses: what a scan needs of a block read before the buffer table exists (a one-pass
 * findleaks: mdbpy/heap/prescan.py), kept until the table can say which buffers they name.
 * The outputs need room for nwords entries; returns how many were written. */
int64_t pick_words(const uint64_t *words, int64_t nwords, uint64_t addr0, uint64_t lo,
                   uint64_t hi, uint64_t *at, uint64_t *val)
{
    const uint64_t span = hi - lo;
    int64_t m = 0, j = 0;
    /* as in scan_words: four words tested together, most groups holding none */
    for (; j + 4 <= nwords; j += 4) {
        if (!(j & 7))
            __builtin_prefetch(words + j + AHEAD_WORDS);
        if (!((words[j] - lo < span) | (words[j + 1] - lo < span) |
              (words[j + 2] - lo < span) | (words[j + 3] - lo < span)))
            continue;
        for (int64_t q = j; q < j + 4; q++) {
            at[m] = addr0 + 8 * (uint64_t)q;
            val[m] = words[q];
            m += words[q] - lo < span;
        }
    }
    for (; j < nwords; j++) {
        at[m] = addr0 + 8 * (uint64_t)j;
        val[m] = words[j];
        m += words[j] - lo < span;
    }
    return m;
}

/* Expand runs of equally spaced buffers (a slab's objects) into the buffer table's columns.
 * Run r holds count[r] buffers of size[r] bytes in group group[r], the first at first[r] and
 * each stride[r] past the one before; a buffer's control record lies ctl_off[r] bytes past it,
 * or it has none when ctl_off[r] is all ones. The columns (and the buffers' ends, which the
 * scan needs next) are written in run order, leaving
 * out the rows (numbered over all runs) listed in skip[], which is sorted. */
void expand_runs(int64_t nruns, const uint64_t *first, const uint64_t *stride,
                 const int64_t *count, const uint64_t *size, const int32_t *group,
                 const uint64_t *ctl_off, const int64_t *skip, int64_t nskip, uint64_t *base,
                 uint64_t *bsize, uint64_t *bend, int32_t *bgroup, uint64_t *ctl)
{
    int64_t at = 0, row = 0, s = 0;
    for (int64_t r = 0; r < nruns; r++) {
        uint64_t b = first[r];
        int tracked = ctl_off[r] != UINT64_MAX;
        for (int64_t k = 0; k < count[r]; k++, row++, b += stride[r]) {
            if (s < nskip && skip[s] == row) {
                s++;
                continue;
            }
            base[at] = b;
            bsize[at] = size[r];
            bend[at] = b + size[r];
            bgroup[at] = group[r];
            ctl[at++] = tracked ? b + ctl_off[r] : 0;
        }
    }
}

/* Copy runs of elements of `size` bytes: run r's len[r] elements from element from[r] of src
 * to element to[r] of dst (a cache's buffers, in its own order, put where their slabs fall
 * among every cache's: umem's buffer table, mdbpy_commands/umem/contents.py). */
void copy_runs(int64_t nruns, const int64_t *from, const int64_t *to, const int64_t *len,
               int64_t size, const uint8_t *src, uint8_t *dst)
{
    for (int64_t r = 0; r < nruns; r++)
        memcpy(dst + to[r] * size, src + from[r] * size, (size_t)(len[r] * size));
}

/* A node of the graph the breadth-first search walks: its out-degree, and `ref`, its only
 * target when it has one, else the index in dst[] of its first edge. A step along a linked
 * list (a heap's long chains) then costs one cache miss, not two. */
typedef struct {
    int32_t deg;
    int32_t ref;
} node_t;

/* Fill nodes[n] from m edges (m < 2**31) whose sources are sorted, and set the bit of every
 * node with an edge in inner[] ((n + 63) / 64 zeroed words). Returns 0, or -1 if the sources
 * are not sorted or out of [0, n). */
int64_t graph_nodes(int64_t n, const int32_t *src, const int32_t *dst, int64_t m, node_t *nodes,
                    uint64_t *inner)
{
    for (int64_t i = 0; i < n; i++)
        nodes[i].deg = nodes[i].ref = 0;
    int64_t prev = -1;
    for (int64_t e = 0; e < m; e++) {
        int64_t s = src[e];
        if (s < prev || s >= n)
            return -1;
        if (s != prev) {
            nodes[s].ref = (int32_t)e;
            inner[s >> 6] |= 1ULL << (s & 63);
        }
        nodes[s].deg++;
        prev = s;
    }
    for (int64_t i = 0; i < n; i++)
        if (nodes[i].deg == 1)
            nodes[i].ref = dst[nodes[i].ref];
    return 0;
}

/* Breadth-first search from the roots, in their order, over nodes built by graph_nodes (dst[]
 * holds the rows, inner[] which nodes have edges): a root's pred becomes -1, every other
 * reached node's the node it was first reached from, and an unreached node's -2 (pred is
 * filled here; it may be NULL, when only seen[] is wanted). queue[] needs n entries, seen[]
 * (n + 63) / 64 zeroed words. Returns the number of nodes reached.
 *
 * Whether a node is reached, and whether it has edges, is asked of bitmaps (128 KB each for a
 * million buffers: they stay in the CPU's cache), not of pred[] or nodes[]: most of a heap's
 * nodes are leaves met through arrays of pointers in no useful order, and a load from a 4 or
 * 8 MB array for each would miss. So a leaf is never queued, the stores to pred[] do not hold
 * the search up, and the queued nodes' entries are prefetched a few places ahead. */
#define AHEAD 16 /* queue places */

int64_t bfs(int64_t n, const node_t *nodes, const int32_t *dst, const uint64_t *inner,
            const int32_t *roots, int64_t nroots, int32_t *pred, int32_t *queue, uint64_t *seen)
{
    int64_t head = 0, tail = 0, leaves = 0;
    if (pred)
        for (int64_t i = 0; i < n; i++)
            pred[i] = -2;
    for (int64_t r = 0; r < nroots; r++) {
        int32_t v = roots[r];
        if (v >= 0 && v < n && !(seen[v >> 6] >> (v & 63) & 1)) {
            seen[v >> 6] |= 1ULL << (v & 63);
            if (pred)
                pred[v] = -1;
            queue[tail++] = v;
        }
    }
    while (head < tail) {
        if (head + AHEAD < tail)
            __builtin_prefetch(&nodes[queue[head + AHEAD]]);
        int32_t u = queue[head++];
        int32_t deg = nodes[u].deg, ref = nodes[u].ref;
        for (int32_t k = 0; k < deg; k++) {
            int32_t v = deg == 1 ? ref : dst[ref + k];
            if (!(seen[v >> 6] >> (v & 63) & 1)) {
                seen[v >> 6] |= 1ULL << (v & 63);
                if (pred)
                    pred[v] = u;
                if (inner[v >> 6] >> (v & 63) & 1)
                    queue[tail++] = v;
                else
                    leaves++;
            }
        }
    }
    return tail + leaves;
}

/* ptmalloc's chain of chunks through one window of a heap: slot k (16 bytes) holds a chunk
 * header whose size word, words[2 * (k - lo) + 1], leads to the next header at
 * k + size / 16. From slot k, while k < hi and the size is one a chunk can have (the flag bits
 * masked: at least minsize, a multiple of 16, at most maxsize, not past end_slot), k is
 * written to out and the walk moves on. A valid size moves by two slots at least, so the walk
 * ends, and out needs room for hi - k entries. Returns how many were written; *end is where
 * the chain stopped: at or past hi, or at a slot whose size is impossible (a smashed header,
 * which commands/ptmalloc/chunks.py then looks at in Python). */
int64_t follow_sizes(const uint64_t *words, int64_t lo, int64_t hi, int64_t k, int64_t end_slot,
                     uint64_t minsize, uint64_t maxsize, int64_t *out, int64_t *end)
{
    int64_t n = 0;
    while (k < hi) {
        uint64_t size = words[2 * (k - lo) + 1] & ~(uint64_t)7;
        if (size < minsize || (size & 15) || size > maxsize)
            break;
        int64_t k2 = k + (int64_t)(size >> 4);
        if (k2 > end_slot)
            break;
        out[n++] = k;
        k = k2;
    }
    *end = k;
    return n;
}

/* The Gather's page cache (mdbpy/heap/gather.py), shared with the list walks below: nslots
 * slots of PAGE bytes in store[], reused oldest first (FIFO), and an open-addressing table
 * (linear probing, at least twice as many entries as slots) from page number to slot. A slot
 * whose page could not be read is marked bad: it holds no bytes, never zeros. Python reads and
 * fills the store through numpy; the table is kept here only. */
#define PAGE_SHIFT 12
#define PAGE_SIZE (1 << PAGE_SHIFT)

typedef struct {
    int64_t *keys;   /* table entries: page number, or -1 when empty */
    int32_t *vals;   /* each entry's slot */
    int64_t mask;    /* table entries - 1 */
    int64_t *owner;  /* each slot's page, or -1 */
    uint8_t *bad;    /* each slot: its page is unreadable */
    uint8_t *store;  /* nslots * PAGE_SIZE bytes */
    int64_t nslots;
    int64_t next;    /* the slot reused next (the oldest) */
} pool_t;

static inline int64_t pool_home(const pool_t *P, int64_t page)
{
    return (int64_t)(((uint64_t)page * 0x9E3779B97F4A7C15ULL) >> 20) & P->mask;
}

/* The slot holding page, or -1. */
static inline int64_t pool_slot(const pool_t *P, int64_t page)
{
    for (int64_t h = pool_home(P, page);; h = (h + 1) & P->mask) {
        if (P->keys[h] == page)
            return P->vals[h];
        if (P->keys[h] < 0)
            return -1;
    }
}

/* Drop page from the table, shifting the entries after it back so that no probe sequence is
 * cut by the hole. */
static void pool_drop(pool_t *P, int64_t page)
{
    int64_t h = pool_home(P, page);
    while (P->keys[h] != page) {
        if (P->keys[h] < 0)
            return;
        h = (h + 1) & P->mask;
    }
    for (int64_t j = (h + 1) & P->mask; P->keys[j] >= 0; j = (j + 1) & P->mask) {
        int64_t home = pool_home(P, P->keys[j]);
        /* entry j may fill the hole at h when its home is not in (h, j] (cyclically) */
        if ((j > h && (home <= h || home > j)) || (j < h && home <= h && home > j)) {
            P->keys[h] = P->keys[j];
            P->vals[h] = P->vals[j];
            h = j;
        }
    }
    P->keys[h] = -1;
}

/* Keep the n pages from page `first` on, read as data[] (n * PAGE_SIZE bytes; bad: which
 * could not be read, NULL when none), in the oldest slots, whose pages are dropped. Pages
 * already kept stay as they are; of more pages than slots, the last ones are kept. */
void pool_add(pool_t *P, int64_t first, int64_t n, const uint8_t *data, const uint8_t *bad)
{
    for (int64_t i = n > P->nslots ? n - P->nslots : 0; i < n; i++) {
        int64_t page = first + i;
        if (pool_slot(P, page) >= 0)
            continue;
        int64_t s = P->next;
        P->next = (s + 1) % P->nslots;
        if (P->owner[s] >= 0)
            pool_drop(P, P->owner[s]);
        int64_t h = pool_home(P, page);
        while (P->keys[h] >= 0)
            h = (h + 1) & P->mask;
        P->keys[h] = page;
        P->vals[h] = (int32_t)s;
        P->owner[s] = page;
        P->bad[s] = bad && bad[i];
        if (!P->bad[s])
            memcpy(P->store + s * PAGE_SIZE, data + i * PAGE_SIZE, PAGE_SIZE);
    }
}

/* The slot of each of n pages, or -1 for one not kept. */
void pool_lookup(const pool_t *P, const int64_t *pages, int64_t n, int64_t *slots)
{
    for (int64_t i = 0; i < n; i++)
        slots[i] = pool_slot(P, pages[i]);
}

/* A list walk over the pool's pages (mdbpy/heap/walk.py's ring direction or chain, whose
 * checks and their order it repeats exactly; walk.py words the breaks). It runs until the walk
 * ends, breaks, needs a page the pool does not hold (need: the page; the caller reads it and
 * calls again, the node is then redone from the start), or fills out[] (the caller grows it).
 * Everything it keeps between calls is in this struct. */
enum { W_DONE, W_BREAK, W_NEED, W_FULL };
enum { C_CYCLE, C_LIMIT, C_CHECK, C_UNREADABLE, C_NULL, C_OWNER, C_BACKLINK };

typedef struct {
    int64_t lo, n;             /* a node is read as bytes [addr + lo, addr + lo + n) */
    int64_t nxt, back, own;    /* offsets of the next link, the back link and the owner
                                * (-1: not checked) */
    int64_t rlo, rn;           /* bytes [addr + rlo, addr + rlo + rn) copied to rows (rn 0:
                                * none); rok says whether they could be read */
    uint64_t owner;
    uint64_t anchor;           /* ring: where the walk ends; chain: 0 (NULL ends it) */
    int64_t ring, forward;     /* ring direction, and whether a node met again is a cycle (or
                                * where a backward walk joins the forward one) */
    int64_t limit;
    uint64_t cur, prev;
    int64_t has_prev;
    int64_t count, cap;
    uint64_t *out;
    uint8_t *rows, *rok;
    uint64_t *seen;            /* a set of addresses (0: empty entry), mask + 1 entries */
    int64_t smask;
    int64_t cause;             /* W_BREAK: why (C_*) */
    uint64_t found;            /* C_OWNER: the owner the node names */
    int64_t need;              /* W_NEED: the page */
} walk_t;

static inline int64_t seen_home(uint64_t a, int64_t mask)
{
    return (int64_t)((a * 0x9E3779B97F4A7C15ULL) >> 17) & mask;
}

static inline int seen_has(const walk_t *W, uint64_t a)
{
    for (int64_t h = seen_home(a, W->smask);; h = (h + 1) & W->smask) {
        if (W->seen[h] == a)
            return 1;
        if (!W->seen[h])
            return 0;
    }
}

/* Add n nonzero addresses to a set of mask + 1 entries (kept at most half full). */
void seen_add(uint64_t *seen, int64_t mask, const uint64_t *addrs, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t h = seen_home(addrs[i], mask);
        while (seen[h] && seen[h] != addrs[i])
            h = (h + 1) & mask;
        seen[h] = addrs[i];
    }
}

/* Whether [base + off, base + off + n) can be read from the pool: 0 yes, -1 a page of it is
 * unreadable (or it runs past 2**64), -2 a page is not kept (*need). Pages are taken in order,
 * as Gather.bytes_at does. */
static int span_ok(const pool_t *P, uint64_t base, int64_t off, int64_t n, int64_t *need)
{
    if (n <= 0 || base > UINT64_MAX - (uint64_t)off)
        return -1;
    uint64_t a = base + (uint64_t)off;
    if (a > UINT64_MAX - (uint64_t)n + 1)
        return -1;
    for (uint64_t p = a >> PAGE_SHIFT; p <= (a + (uint64_t)n - 1) >> PAGE_SHIFT; p++) {
        int64_t s = pool_slot(P, (int64_t)p);
        if (s < 0) {
            *need = (int64_t)p;
            return -2;
        }
        if (P->bad[s])
            return -1;
    }
    return 0;
}

/* Copy n bytes at a (a span span_ok found readable) to dst. */
static void span_copy(const pool_t *P, uint64_t a, int64_t n, uint8_t *dst)
{
    while (n > 0) {
        int64_t at = (int64_t)(a & (PAGE_SIZE - 1));
        int64_t k = PAGE_SIZE - at < n ? PAGE_SIZE - at : n;
        const uint8_t *src = P->store + (int64_t)pool_slot(P, (int64_t)(a >> PAGE_SHIFT)) *
            PAGE_SIZE + at;
        for (int64_t i = 0; i < k; i++)
            dst[i] = src[i];
        dst += k;
        a += (uint64_t)k;
        n -= k;
    }
}

static inline uint64_t word_at(const pool_t *P, uint64_t a)
{
    uint8_t b[8];
    span_copy(P, a, 8, b);
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

int64_t walk_list(const pool_t *P, walk_t *W)
{
    for (;;) {
        uint64_t cur = W->cur;
        if (W->ring ? cur == W->anchor : cur == W->anchor && (W->anchor == 0 || W->count))
            return W_DONE;
        if (seen_has(W, cur)) {
            if (W->ring && !W->forward)
                return W_DONE;
            W->cause = C_CYCLE;
            return W_BREAK;
        }
        if (W->count >= W->limit) {
            W->cause = C_LIMIT;
            return W_BREAK;
        }
        if (W->ring && !cur) {
            W->cause = C_NULL;
            return W_BREAK;
        }
        int r = span_ok(P, cur, W->lo, W->n, &W->need);
        if (r == -2)
            return W_NEED;
        if (r == -1) {
            W->cause = C_UNREADABLE;
            return W_BREAK;
        }
        if (W->own >= 0 && (W->found = word_at(P, cur + (uint64_t)W->own)) != W->owner) {
            W->cause = C_OWNER;
            return W_BREAK;
        }
        if (W->back >= 0 && word_at(P, cur + (uint64_t)W->back) != W->prev) {
            W->cause = C_BACKLINK;
            return W_BREAK;
        }
        int rows = 0;
        if (W->rn > 0) {
            rows = span_ok(P, cur, W->rlo, W->rn, &W->need);
            if (rows == -2)
                return W_NEED;
        }
        if (W->count == W->cap)
            return W_FULL;
        if (W->rn > 0) {
            W->rok[W->count] = rows == 0;
            if (rows == 0)
                span_copy(P, cur + (uint64_t)W->rlo, W->rn, W->rows + W->count * W->rn);
        }
        seen_add(W->seen, W->smask, &cur, 1);
        W->out[W->count++] = cur;
        W->prev = cur;
        W->has_prev = 1;
        W->cur = word_at(P, cur + (uint64_t)W->nxt);
    }
}

/*
 * The typegraph's propagation (mdbpy/types/graph/solve.py states the rules and keeps the
 * reference in Python; compiled.py drives these two functions and is tested against it): a
 * worklist over typed buffers, one step per buffer and per edge out of it, in the reference's
 * order exactly (the order decides which type reaches a buffer first, and so what conflicts).
 * The types are tables by tid that the caller grows as its catalog grows; a type's plan is
 * loaded when a buffer of it is first expanded (tg_drain stops and asks for it), as the
 * reference computes it then. The caller owns every array, as above.
 */
typedef struct {
    int64_t n;               /* buffers */
    const uint64_t *size;    /* n sizes */
    const int64_t *start;    /* n + 1: each buffer's first edge (edges sorted by source) */
    const int64_t *soff;     /* per edge: offset of the word in its source */
    const int64_t *dst;      /* per edge: the buffer it points into */
    const int64_t *doff;     /* per edge: where in that buffer */
    const int64_t *tsize;    /* per tid: size */
    const uint8_t *tpoly;    /* per tid: a C++ class (only a vtable types it) */
    const int64_t *at0_start; /* per tid, and one more: its range in at0[] */
    const int32_t *at0;      /* the tids at offset 0 of each type, ascending per type */
    const int64_t *plan_lo;  /* per tid: its plan's range in poff/ptid (lo -1: not loaded) */
    const int64_t *plan_hi;
    const int64_t *flex_off; /* per tid: its flexible array's offset, -1 for none */
    const int64_t *flex_es;  /* its element size */
    const int64_t *flex_lo;  /* its element plan's range in poff/ptid */
    const int64_t *flex_hi;
    const int64_t *poff;     /* plans: offsets, ascending within each range */
    const int32_t *ptid;     /* plans: the pointee tid at each offset */
    const uint8_t *fixed;    /* per buffer: its type is authoritative (vtable, hint) */
    const int64_t *fix_row;  /* nfix authoritative buffers, in the order they are queued */
    const int32_t *fix_tid;
    const uint8_t *fix_how;
    int64_t nfix;
    const int64_t *root_dst; /* nroots pointers from typed variables, in order */
    const int64_t *root_doff;
    const int32_t *root_tid;
    int64_t nroots;
    int32_t *tid;            /* per buffer, a run's state: its type, -1 unknown */
    uint8_t *how;
    uint8_t *gave;           /* its expansion gave evidence */
    uint8_t *poisoned;       /* excluded (kept across runs) */
    uint8_t *newp;           /* conflicting after it gave evidence: a new run excludes it */
    int64_t *queue;          /* the worklist: [qhead, qtail) of qcap entries */
    int64_t qhead, qtail, qcap;
    int64_t *ib;             /* interior evidence, checked after the run: buffer, offset, tid */
    int64_t *ioff;
    int32_t *it;
    int64_t icount, icap;
    int64_t steps;           /* typed buffers expanded */
    int64_t need;            /* what tg_drain stopped for: a tid, a number of entries, a
                                key's range */
    const uint64_t *req_lo;  /* per buffer: the requests it could have served (containers.py), */
    const uint64_t *req_hi;  /* hi 0 where unknown; both NULL: no types by size */
    const int64_t *ckey_range; /* the container keys answered (tg_ckey), ascending by range */
    const int64_t *ckey_word;  /* then by word */
    const int32_t *cval;     /* the container each names, -1 for none or several */
    int64_t nckey;
    int64_t need_word;       /* the word of the key tg_drain stopped for */
    int64_t rnext;           /* the next root tg_drain offers */
} tg_t;

enum { TG_DONE, TG_NEED_PLAN, TG_FULL, TG_NEED_CONTAINER };
enum { TG_UNKNOWN, TG_ROOT, TG_PROPAGATED, TG_CONTAINER = 5 }; /* solve.py's HOW numbers */
enum { TG_OFF_BITS = 24, TG_TID_BITS = 20 }; /* containers.py's OFF_BITS, TID_BITS */

/* Index of the first of sorted a[lo, hi) not below v (hi if none). */
static inline int64_t tg_lower_i32(const int32_t *a, int64_t lo, int64_t hi, int32_t v)
{
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Does type t hold type v at its offset 0 (v in t's at0)? */
static inline int tg_at0(const tg_t *G, int32_t t, int32_t v)
{
    int64_t hi = G->at0_start[t + 1];
    int64_t i = tg_lower_i32(G->at0, G->at0_start[t], hi, v);
    return i < hi && G->at0[i] == v;
}

/* The pointee of the plan word at offset o of plan range [lo, hi), -1 for none. */
static inline int32_t tg_pointee(const tg_t *G, int64_t lo, int64_t hi, int64_t o)
{
    int64_t end = hi;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (G->poff[mid] < o)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < end && G->poff[lo] == o ? G->ptid[lo] : -1;
}

static void tg_conflict(tg_t *G, int64_t b)
{
    if (G->gave[b]) {
        G->newp[b] = 1; /* types were derived from it: start again without it */
    } else {           /* nothing came of its type yet: exclude it in place */
        G->poisoned[b] = 1;
        G->tid[b] = -1;
        G->how[b] = TG_UNKNOWN;
    }
}

/* Evidence that buffer b starts with a t (solve.py's offer). */
static void tg_offer(tg_t *G, int64_t b, int32_t t, uint8_t why)
{
    if (G->poisoned[b])
        return;
    int32_t cur = G->tid[b];
    if (cur == t)
        return;
    if (cur < 0) {
        if (G->tpoly[t])
            return;
        if ((uint64_t)G->tsize[t] > G->size[b]) {
            tg_conflict(G, b);
            return;
        }
        G->tid[b] = t;
        G->how[b] = why;
        G->queue[G->qtail++] = b;
        return;
    }
    if (tg_at0(G, cur, t) || G->fixed[b])
        return;
    if (tg_at0(G, t, cur) && !G->tpoly[t] && (uint64_t)G->tsize[t] <= G->size[b]) {
        G->tid[b] = t; /* the larger type that starts with the old one */
        G->queue[G->qtail++] = b;
        return;
    }
    tg_conflict(G, b);
}

/* Buffer b's packed request range (containers.py's Containers.ranges), -1 for none. */
static inline int64_t tg_crange(const tg_t *G, int64_t b)
{
    if (!G->req_hi)
        return -1;
    uint64_t lo = G->req_lo[b], hi = G->req_hi[b], max = (uint64_t)1 << TG_OFF_BITS;
    if (hi == 0 || lo > hi || hi >= max || G->size[b] >= max)
        return -1;
    return (int64_t)(lo << TG_OFF_BITS | hi);
}

/* The word of the container key of t at offset off of buffer b (containers.py's
 * Containers.key: its range is tg_crange's), or -1 where b's type is not to be inferred from
 * it: typed, excluded or without a request range. */
static inline int64_t tg_ckey(const tg_t *G, int64_t b, int64_t off, int32_t t)
{
    if (G->tid[b] >= 0 || G->poisoned[b] || tg_crange(G, b) < 0 || t >= (1 << TG_TID_BITS))
        return -1;
    return ((int64_t)t << TG_OFF_BITS) | off;
}

/* The index of the key (range, word) among the answered keys, -1 when not answered yet. */
static inline int64_t tg_cfind(const tg_t *G, int64_t range, int64_t word)
{
    int64_t lo = 0, hi = G->nckey;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (G->ckey_range[mid] < range ||
            (G->ckey_range[mid] == range && G->ckey_word[mid] < word))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < G->nckey && G->ckey_range[lo] == range && G->ckey_word[lo] == word ? lo : -1;
}

/* Is the container key of a t at offset off of buffer b unanswered? Then it is in need and
 * need_word (tg_drain stops to ask for it). */
static int tg_needs(tg_t *G, int64_t b, int64_t off, int32_t t)
{
    int64_t word = tg_ckey(G, b, off, t);
    if (word < 0 || tg_cfind(G, tg_crange(G, b), word) >= 0)
        return 0;
    G->need = tg_crange(G, b);
    G->need_word = word;
    return 1;
}

/* Evidence that buffer b holds a t at offset off (solve.py's inside): kept for the run's end
 * check, and offered as the container it names when b is unknown (its key answered: the
 * caller asked tg_needs first). */
static void tg_inside(tg_t *G, int64_t b, int64_t off, int32_t t)
{
    G->ib[G->icount] = b;
    G->ioff[G->icount] = off;
    G->it[G->icount++] = t;
    int64_t word = tg_ckey(G, b, off, t);
    int64_t i = word >= 0 ? tg_cfind(G, tg_crange(G, b), word) : -1;
    if (i >= 0 && G->cval[i] >= 0)
        tg_offer(G, b, G->cval[i], TG_CONTAINER);
}

/* A run's start: the authoritative buffers queued (the roots are offered by tg_drain, which
 * can stop to ask for a container). The queue needs room for nfix + nroots entries, the
 * interior list for nroots. */
void tg_seed(tg_t *G)
{
    for (int64_t i = 0; i < G->nfix; i++) {
        int64_t b = G->fix_row[i];
        G->tid[b] = G->fix_tid[i];
        G->how[b] = G->fix_how[i];
        G->queue[G->qtail++] = b;
    }
}

/* The roots' evidence offered, from rnext on (solve.py's loop over the roots); 0 when all
 * were, 1 when stopped before one whose container key is unanswered. */
static int tg_roots(tg_t *G)
{
    for (; G->rnext < G->nroots; G->rnext++) {
        int64_t i = G->rnext, b = G->root_dst[i], off = G->root_doff[i];
        int32_t t = G->root_tid[i];
        if (off == 0) {
            tg_offer(G, b, t, TG_ROOT);
        } else {
            if (tg_needs(G, b, off, t))
                return 1;
            tg_inside(G, b, off, t);
        }
    }
    return 0;
}

/* The pointee type the word of edge e gives, buffer b being a t (its plan loaded), or -1:
 * no evidence there (not a pointer of its plan, or past its last whole element). */
static int32_t tg_word(const tg_t *G, int64_t b, int32_t t, int64_t e)
{
    int64_t es = G->tsize[t], fo = G->flex_off[t];
    int64_t lim = fo >= 0 ? es : (int64_t)(G->size[b] / (uint64_t)es) * es;
    int64_t o = G->soff[e];
    if (o < lim)
        return tg_pointee(G, G->plan_lo[t], G->plan_hi[t], o % es);
    if (fo >= 0 && o >= fo)
        return tg_pointee(G, G->flex_lo[t], G->flex_hi[t], (o - fo) % G->flex_es[t]);
    return -1;
}

/* Does buffer b's expansion (its edges [e0, e1)) ask for a container key not answered yet?
 * Then it is in need, need_word. Without request ranges nothing is asked; an edge to the
 * start of a buffer, or into one typed, excluded or without a range, is passed over before
 * its word's type is looked up (tg_word's two bisections): most edges are such. */
static int tg_unanswered(tg_t *G, int64_t b, int32_t t, int64_t e0, int64_t e1)
{
    if (!G->req_hi)
        return 0;
    for (int64_t e = e0; e < e1; e++) {
        int64_t d = G->dst[e];
        if (G->doff[e] == 0 || G->tid[d] >= 0 || G->poisoned[d] || tg_crange(G, d) < 0)
            continue;
        int32_t p = tg_word(G, b, t, e);
        if (p >= 0 && tg_needs(G, d, G->doff[e], p))
            return 1;
    }
    return 0;
}

/* Offer the roots' evidence, then expand queued buffers until the queue is empty (TG_DONE);
 * or stop before a root, or a buffer, whose interior evidence asks which container a key
 * names (TG_NEED_CONTAINER, need and need_word), before a buffer whose type's plan is not
 * loaded (TG_NEED_PLAN, need = the tid), or whose edges might not fit in the queue or the
 * interior list (TG_FULL, need = entries wanted in each); called again once the caller has
 * answered, loaded or grown what was asked, it goes on where it stopped. */
int64_t tg_drain(tg_t *G)
{
    if (tg_roots(G))
        return TG_NEED_CONTAINER;
    while (G->qhead < G->qtail) {
        int64_t b = G->queue[G->qhead];
        int32_t t = G->tid[b];
        if (t < 0) {
            G->qhead++;
            continue;
        }
        if (G->plan_lo[t] < 0) {
            G->need = t;
            return TG_NEED_PLAN;
        }
        int64_t e0 = G->start[b], e1 = G->start[b + 1];
        if (G->qtail + (e1 - e0) > G->qcap || G->icount + (e1 - e0) > G->icap) {
            G->need = e1 - e0;
            return TG_FULL;
        }
        if (G->plan_lo[t] == G->plan_hi[t] && G->flex_off[t] < 0) {
            G->qhead++;
            continue;
        }
        if (tg_unanswered(G, b, t, e0, e1))
            return TG_NEED_CONTAINER;
        G->qhead++;
        G->steps++;
        for (int64_t e = e0; e < e1; e++) {
            int32_t p = tg_word(G, b, t, e);
            if (p < 0)
                continue;
            G->gave[b] = 1;
            if (G->doff[e] == 0)
                tg_offer(G, G->dst[e], p, TG_PROPAGATED);
            else
                tg_inside(G, G->dst[e], G->doff[e], p);
        }
    }
    return TG_DONE;
}

/* The typegraph's edges in one block of words (the first at addr0; mdbpy/types/graph/
 * evidence.py's scan_heap, whose numpy form is the reference): every word inside one of the n
 * sorted buffers [base, end) whose value lies inside one, as (source buffer, offset of the
 * word in it, target buffer, offset of the value in it), in word order (the typegraph's edges
 * keep offsets, which findleaks' scan_words does not). Only values in [lo, hi) are looked up,
 * lo being base[0]. The targets of up to TG_CHUNK such words are found together, by a
 * bisection of base[] without branches taken in step for all of them: each step's loads are
 * independent, so their cache misses overlap instead of queueing (one search at a time costs
 * a dependent miss per step). The source is a cursor that only moves forward. The outputs need
 * room for nwords entries; returns how many were written. */
#define TG_CHUNK 256

int64_t tg_scan(const uint64_t *base, const uint64_t *end, int64_t n, const uint64_t *words,
                int64_t nwords, uint64_t addr0, uint64_t lo, uint64_t hi, int64_t *src,
                int64_t *soff, int64_t *dst, int64_t *doff)
{
    int64_t pick[TG_CHUNK], at[TG_CHUNK];
    const uint64_t span = hi - lo;
    int64_t out = 0;
    int64_t cur = last_at_or_below(base, -1, n - 1, addr0);
    for (int64_t j0 = 0; j0 < nwords; j0 += TG_CHUNK) {
        int64_t len = nwords - j0 < TG_CHUNK ? nwords - j0 : TG_CHUNK, m = 0;
        const uint64_t *w = words + j0;
        for (int64_t j = 0; j < len; j++) {
            pick[m] = j;
            m += w[j] - lo < span;
        }
        for (int64_t i = 0; i < m; i++)
            at[i] = 0;
        for (int64_t left = n; left > 1; left -= left / 2) {
            int64_t half = left / 2;
            for (int64_t i = 0; i < m; i++)
                at[i] += base[at[i] + half] <= w[pick[i]] ? half : 0;
        }
        for (int64_t i = 0; i < m; i++) {
            uint64_t v = w[pick[i]];
            int64_t d = at[i];
            if (v < base[d] || v >= end[d])
                continue;
            uint64_t a = addr0 + 8 * (uint64_t)(j0 + pick[i]);
            while (cur + 1 < n && base[cur + 1] <= a)
                cur++;
            if (cur < 0 || a >= end[cur])
                continue;
            src[out] = cur;
            soff[out] = (int64_t)(a - base[cur]);
            dst[out] = d;
            doff[out++] = (int64_t)(v - base[d]);
        }
    }
    return out;
}

/*
 * Filling the pool without coming back to Python: a walk over a million buffers' slabs misses
 * tens of thousands of pages, and each miss handed to Python (Gather._fill: find the mapping,
 * read, keep) cost ~25 us beside the read itself. A src_t says where the bytes of the
 * target's address ranges are in a file (a live process's /proc/PID/mem, where the offset is
 * the address; a core file): src_fill reads a missed page there (with the stretch beyond when
 * it follows the block read last, as Gather._fill does) and keeps it. Anything it cannot read
 * whole (a range it does not hold, a short read) is left to Python, which reads it piece by
 * piece and marks what is unreadable, so that what the pool holds is the same either way.
 */
typedef struct {
    int64_t fd;
    const uint64_t *start;   /* n ranges, sorted and disjoint: [start, end) lies in the file */
    const uint64_t *end;     /* at offset off */
    const uint64_t *off;
    int64_t n;
    uint64_t last_a, last_b; /* the block read last (by Gather._fill too) */
    uint64_t block, run_max; /* a miss's read, and the longest (gather.py's SRC_BLOCK and
                              * Gather.run_max) */
    uint8_t *buf;            /* run_max bytes */
} src_t;

#include <unistd.h>

/* Read and keep pages [first, end) (which hold page), clipped to the range holding page:
 * 0 when kept, -1 when Python must read them. */
static int src_read(pool_t *P, src_t *S, int64_t page, int64_t first, int64_t end)
{
    uint64_t at = (uint64_t)page << PAGE_SHIFT;
    uint64_t a = (uint64_t)first << PAGE_SHIFT, b = (uint64_t)end << PAGE_SHIFT;
    int64_t i = last_at_or_below(S->start, -1, S->n - 1, at);
    if (i < 0 || at >= S->end[i])
        return -1;
    if (a < S->start[i])
        a = S->start[i];
    if (b > S->end[i])
        b = S->end[i];
    int64_t want = (int64_t)(b - a);
    if (pread((int)S->fd, S->buf, (size_t)want, (off_t)(S->off[i] + (a - S->start[i]))) != want)
        return -1;
    S->last_a = a;
    S->last_b = b;
    pool_add(P, (int64_t)(a >> PAGE_SHIFT), want >> PAGE_SHIFT, S->buf, NULL);
    return 0;
}

/* The block to read for a page missed at address at (Gather's read-ahead, the one policy of
 * the compiled walks and of Gather._fill): `block` bytes around it, or, within `block` past
 * either end of the block [la, lb) read last, the stretch beyond that end, twice as long as
 * that block (up to run_max). Writes [a, b) to out[0], out[1]. */
void fill_span(uint64_t la, uint64_t lb, uint64_t at, uint64_t block, uint64_t run_max,
               uint64_t *out)
{
    uint64_t grow = 2 * (lb - la) < run_max ? 2 * (lb - la) : run_max, a, b;
    if (la < lb && lb <= at && at - lb < block) {
        a = lb;
        b = lb + grow > at + PAGE_SIZE ? lb + grow : at + PAGE_SIZE;
    } else if (la < lb && at < la && la - at <= block) {
        a = la > grow && la - grow < at ? la - grow : at;
        b = la;
    } else {
        a = at & ~(block - 1);
        b = a + block;
    }
    out[0] = a;
    out[1] = b;
}

/* Read and keep the block of a page a walk missed (fill_span's, with S's block). */
static int src_fill(pool_t *P, src_t *S, int64_t page)
{
    uint64_t span[2];
    fill_span(S->last_a, S->last_b, (uint64_t)page << PAGE_SHIFT, S->block, S->run_max, span);
    return src_read(P, S, page, (int64_t)(span[0] >> PAGE_SHIFT),
                    (int64_t)(span[1] >> PAGE_SHIFT));
}

/* walk_list, reading the pages it misses from S: returns as walk_list does, W_NEED only for a
 * page S could not give. */
int64_t walk_list_src(pool_t *P, walk_t *W, src_t *S)
{
    int64_t last = -1;
    for (;;) {
        int64_t r = walk_list(P, W);
        if (r != W_NEED || W->need == last || src_fill(P, S, W->need) < 0)
            return r;  /* a page asked for twice running was not kept: Python reads it */
        last = W->need;
    }
}

/* pages between two that rows need which one read takes along (a page costs ~1 us to read
 * from another process, a read ~3 us more) */
#define ROW_GAP_PAGES 2

/* Copy each of n rows of `size` bytes (size <= PAGE_SIZE) at addrs[] (in ascending order:
 * a missed page is read with the pages the rows after it need) from the pool, reading
 * missed pages from S: done[i] 1 when row i was copied to out, 0 when one of its pages is
 * unreadable or S could not give it (Python then reads the row). Returns the rows done. */
int64_t pool_rows(pool_t *P, src_t *S, const uint64_t *addrs, int64_t n, int64_t size,
                  uint8_t *out, uint8_t *done)
{
    /* the page of the row copied last and its slot: the rows after it on that page (a
     * cache's records, a dozen a page) are copied without looking the page up again; a read
     * (which may reuse the slot) comes only after a miss, which looks it up anew */
    int64_t k = 0, lpage = -1, lslot = 0;
    for (int64_t i = 0; i < n; i++) {
        uint64_t at = addrs[i] & (PAGE_SIZE - 1);
        if ((int64_t)(addrs[i] >> PAGE_SHIFT) == lpage && at + (uint64_t)size <= PAGE_SIZE) {
            memcpy(out + i * size, P->store + lslot * PAGE_SIZE + at, (size_t)size);
            done[i] = 1;
            k++;
            continue;
        }
        int64_t need;
        int r = span_ok(P, addrs[i], 0, size, &need);
        for (int tries = 0; r == -2 && tries < 4; tries++) {
            /* the pages the rows from here on need, while no gap between them passes
             * ROW_GAP_PAGES, up to run_max bytes: one read */
            int64_t last = need, cap = need + (int64_t)(S->run_max >> PAGE_SHIFT);
            for (int64_t j = i; j < n; j++) {
                int64_t p0 = (int64_t)(addrs[j] >> PAGE_SHIFT);
                int64_t p1 = (int64_t)((addrs[j] + (uint64_t)size - 1) >> PAGE_SHIFT);
                if (p0 > last + ROW_GAP_PAGES || p1 >= cap || p0 < need)
                    break;
                if (p1 > last)
                    last = p1;
            }
            if (src_read(P, S, need, need, last + 1) < 0)
                break;
            r = span_ok(P, addrs[i], 0, size, &need);
        }
        done[i] = r == 0;
        lpage = -1;
        if (r == 0) {
            span_copy(P, addrs[i], size, out + i * size);
            k++;
            if (at + (uint64_t)size <= PAGE_SIZE) {
                lpage = (int64_t)(addrs[i] >> PAGE_SHIFT);
                lslot = pool_slot(P, lpage);
            }
        }
    }
    return k;
}
