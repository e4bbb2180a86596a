/*
 * bumpalloc: a toy allocator, and a program using it, for docs/new-allocator.md.
 *
 * The allocator carves buffers from one anonymous mapping, in order, and never reuses them: each
 * buffer is preceded by a 32-byte header holding a magic number, the size, the state and the
 * caller's address (its allocation record). bump_free() only marks the header free. The arena's
 * descriptor is the global `bump_arena`, which is how the mdbpy module finds it.
 *
 * The program keeps a list of three nodes reachable from the global `list_head`, frees one
 * buffer, and loses the only pointer to another (the leak). It prints its addresses on a READY
 * line and waits until it is killed.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define BUMP_MAGIC 0x42554d5041524e41ULL /* "BUMPARNA" */
#define HDR_MAGIC 0x4255464845414452ULL  /* "BUFHEADR" */
#define BUMP_ALLOC 1
#define BUMP_FREE 2
#define ARENA_SIZE (1 << 20)

struct bump_hdr {
    uint64_t magic;
    uint64_t size;  /* the buffer's size, rounded up to 16 */
    uint64_t state; /* BUMP_ALLOC or BUMP_FREE */
    void *caller;   /* who allocated it */
};

struct bump_arena {
    uint64_t magic;
    char *base;   /* the first header */
    char *cursor; /* where the next header goes */
    char *limit;
    uint64_t nallocs;
    uint64_t nfrees;
} bump_arena;

__attribute__((noinline)) void *bump_alloc(size_t size)
{
    struct bump_arena *a = &bump_arena;
    size = (size + 15) & ~(size_t)15;
    if (a->base == NULL) {
        char *m = mmap(NULL, ARENA_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        if (m == MAP_FAILED)
            return NULL;
        a->magic = BUMP_MAGIC;
        a->base = a->cursor = m;
        a->limit = m + ARENA_SIZE;
    }
    if (a->cursor + sizeof(struct bump_hdr) + size > a->limit)
        return NULL;
    struct bump_hdr *h = (struct bump_hdr *)a->cursor;
    h->magic = HDR_MAGIC;
    h->size = size;
    h->state = BUMP_ALLOC;
    h->caller = __builtin_return_address(0);
    a->cursor += sizeof(*h) + size;
    a->nallocs++;
    return h + 1;
}

__attribute__((noinline)) void bump_free(void *p)
{
    struct bump_hdr *h = (struct bump_hdr *)p - 1;
    h->state = BUMP_FREE;
    bump_arena.nfrees++;
}

struct node {
    struct node *next;
    long value;
};

struct node *list_head;

__attribute__((noinline)) static struct node *add_node(long value)
{
    struct node *n = bump_alloc(sizeof(*n));
    n->value = value;
    n->next = list_head;
    list_head = n;
    return n;
}

__attribute__((noinline)) static char *make_leak(void)
{
    char *s = bump_alloc(40);
    strcpy(s, "nobody points at me");
    return s;
}

int main(void)
{
    for (long i = 1; i <= 3; i++)
        add_node(i * 100);
    char *scratch = bump_alloc(64);
    bump_free(scratch);
    char *leak = make_leak();
    printf("READY head=%p leak=%p freed=%p\n", (void *)list_head, (void *)leak,
           (void *)scratch);
    fflush(stdout);
    leak = NULL; /* the only pointer to the leaked buffer is gone */
    for (;;)
        pause();
}
