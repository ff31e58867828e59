#ifndef SLUICE_CHIREDIS_SHIM_H
#define SLUICE_CHIREDIS_SHIM_H
// Only the RESP layer of hiredis is used (its reader and command formatter); sockets are NIO's.
#include <stdlib.h>
#include <hiredis/hiredis.h>
#include <hiredis/read.h>

// hiredis 0.14 turns both `$-1` (null bulk string) and `*-1` (null array) into REDIS_REPLY_NIL.
// The reader task still knows which one it parsed, so this createNil records it: a NIL reply
// whose `integer` is 1 came from `*-1`. It allocates exactly like hiredis' own createNilObject
// (calloc, freed by freeReplyObject's free()) and links into the parent array the same way.
static inline void *sluice_hiredis_createNil(const redisReadTask *task) {
    redisReply *reply = (redisReply *)calloc(1, sizeof(redisReply));
    if (reply == NULL) return NULL;
    reply->type = REDIS_REPLY_NIL;
    reply->integer = task->type == REDIS_REPLY_ARRAY ? 1 : 0;
    if (task->parent != NULL) {
        redisReply *parent = (redisReply *)task->parent->obj;
        parent->element[task->idx] = reply;
    }
    return reply;
}

// Limits on what one reply may make the reader allocate (Redis replies are outside input). The
// reader's privdata points at this state, and hiredis copies privdata into every read task.
// Counters restart at each reply's root object; a hook that refuses returns NULL, which hiredis
// reports as "Out of memory", and `exceeded` says which limit it was.
typedef struct {
    size_t maxElements;  // values in one reply (array elements at every depth included)
    size_t maxBytes;     // bytes of the string values of one reply, together
    size_t elements;
    size_t bytes;
    int exceeded;        // 0, SLUICE_HIREDIS_TOO_MANY_ELEMENTS or SLUICE_HIREDIS_TOO_MANY_BYTES
    redisReplyObjectFunctions functions;  // what reader->fn points at
    redisReplyObjectFunctions defaults;   // hiredis' own, which do the allocating
} sluice_hiredis_state;

#define SLUICE_HIREDIS_TOO_MANY_ELEMENTS 1
#define SLUICE_HIREDIS_TOO_MANY_BYTES 2

// Counts `children` more values (an array's declared elements, counted when the array is made,
// before hiredis allocates their slots) and `bytes` more string bytes for the reply `task`
// belongs to; the root value counts itself. 0 when a limit would be passed (then nothing may be
// allocated).
static inline int sluice_hiredis_admit(const redisReadTask *task, size_t children, size_t bytes) {
    sluice_hiredis_state *state = (sluice_hiredis_state *)task->privdata;
    size_t elements = children;
    if (task->parent == NULL) {
        state->elements = 0;
        state->bytes = 0;
        elements += 1;
    }
    if (elements > state->maxElements - state->elements) {
        state->exceeded = SLUICE_HIREDIS_TOO_MANY_ELEMENTS;
        return 0;
    }
    if (bytes > state->maxBytes - state->bytes) {
        state->exceeded = SLUICE_HIREDIS_TOO_MANY_BYTES;
        return 0;
    }
    state->elements += elements;
    state->bytes += bytes;
    return 1;
}

static inline void *sluice_hiredis_createString(const redisReadTask *task, char *str, size_t len) {
    if (!sluice_hiredis_admit(task, 0, len)) return NULL;
    return ((sluice_hiredis_state *)task->privdata)->defaults.createString(task, str, len);
}

static inline void *sluice_hiredis_createArray(const redisReadTask *task, int elements) {
    // Its elements are counted now: hiredis allocates their slots right away.
    if (elements < 0 || !sluice_hiredis_admit(task, (size_t)elements, 0)) return NULL;
    return ((sluice_hiredis_state *)task->privdata)->defaults.createArray(task, elements);
}

static inline void *sluice_hiredis_createInteger(const redisReadTask *task, long long value) {
    if (!sluice_hiredis_admit(task, 0, 0)) return NULL;
    return ((sluice_hiredis_state *)task->privdata)->defaults.createInteger(task, value);
}

static inline void *sluice_hiredis_createLimitedNil(const redisReadTask *task) {
    if (!sluice_hiredis_admit(task, 0, 0)) return NULL;
    return sluice_hiredis_createNil(task);
}

// A reader with hiredis' default reply objects behind the limits above, and createNil (above).
// The state is per reader (hiredis keeps pointers into it) and is freed by
// sluice_hiredis_readerFree.
static inline redisReader *sluice_hiredis_readerCreate(size_t maxElements, size_t maxBytes) {
    redisReader *reader = redisReaderCreate();
    if (reader == NULL) return NULL;
    sluice_hiredis_state *state = (sluice_hiredis_state *)calloc(1, sizeof(sluice_hiredis_state));
    if (state == NULL) {
        redisReaderFree(reader);
        return NULL;
    }
    state->maxElements = maxElements;
    state->maxBytes = maxBytes;
    state->defaults = *reader->fn;
    state->functions = *reader->fn;
    state->functions.createString = sluice_hiredis_createString;
    state->functions.createArray = sluice_hiredis_createArray;
    state->functions.createInteger = sluice_hiredis_createInteger;
    state->functions.createNil = sluice_hiredis_createLimitedNil;
    reader->fn = &state->functions;
    reader->privdata = state;
    return reader;
}

// Which limit refused the last reply (0: none did).
static inline int sluice_hiredis_readerExceeded(const redisReader *reader) {
    return ((const sluice_hiredis_state *)reader->privdata)->exceeded;
}

// Bytes fed and not yet consumed: the part of a reply still being read (hiredis waits for a
// whole bulk string before it creates it, so this is where a long one accumulates).
static inline size_t sluice_hiredis_readerBuffered(const redisReader *reader) {
    return reader->len - reader->pos;
}

static inline void sluice_hiredis_readerFree(redisReader *reader) {
    void *state = reader->privdata;
    redisReaderFree(reader);  // may still call the functions' freeObject on a half-built reply
    free(state);
}
#endif
