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

// The most elements one array reply may announce. hiredis 0.14 allocates the element array as
// soon as it reads `*n`, before any element arrives, for any n up to INT_MAX (16 GiB of pointers
// for `*2147483647`); a longer array is refused instead (no reply Sluice reads comes near it).
#define SLUICE_HIREDIS_MAX_ARRAY_ELEMENTS (1 << 20)

// hiredis' createArrayObject, bounded by SLUICE_HIREDIS_MAX_ARRAY_ELEMENTS. Returning NULL makes
// the reader fail with REDIS_ERR_OOM, which RESPParser reports as a protocol error.
static inline void *sluice_hiredis_createArray(const redisReadTask *task, int elements) {
    if (elements > SLUICE_HIREDIS_MAX_ARRAY_ELEMENTS) return NULL;
    redisReply *reply = (redisReply *)calloc(1, sizeof(redisReply));
    if (reply == NULL) return NULL;
    reply->type = REDIS_REPLY_ARRAY;
    if (elements > 0) {
        reply->element = (redisReply **)calloc((size_t)elements, sizeof(redisReply *));
        if (reply->element == NULL) {
            free(reply);
            return NULL;
        }
    }
    reply->elements = elements > 0 ? (size_t)elements : 0;
    if (task->parent != NULL) {
        redisReply *parent = (redisReply *)task->parent->obj;
        parent->element[task->idx] = reply;
    }
    return reply;
}

// A reader with hiredis' default reply objects except for createNil and createArray (above). The function table
// is per reader (hiredis keeps a pointer to it) and is freed by sluice_hiredis_readerFree.
static inline redisReader *sluice_hiredis_readerCreate(void) {
    redisReader *reader = redisReaderCreate();
    if (reader == NULL) return NULL;
    redisReplyObjectFunctions *functions = (redisReplyObjectFunctions *)malloc(sizeof(redisReplyObjectFunctions));
    if (functions == NULL) {
        redisReaderFree(reader);
        return NULL;
    }
    *functions = *reader->fn;
    functions->createNil = sluice_hiredis_createNil;
    functions->createArray = sluice_hiredis_createArray;
    reader->fn = functions;
    return reader;
}

static inline void sluice_hiredis_readerFree(redisReader *reader) {
    redisReplyObjectFunctions *functions = reader->fn;
    redisReaderFree(reader);  // may still call functions->freeObject on a half-built reply
    free(functions);
}
#endif
