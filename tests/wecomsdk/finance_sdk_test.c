/*
 * Test stand-in for the vendor session-archive library (libWeWorkFinanceSdk_C.so).
 *
 * It exports the same C functions with the same prototypes and struct layouts as the
 * vendor header, so the product's ctypes binding can be exercised end to end without
 * the real library or network. Data comes from a line-based fixture written by
 * build.py:write_fixture(); its path is read from WECOM_TESTSDK_FIXTURE at Init().
 *
 * DecryptData() here reverses a deliberately simple cipher (a xorshift keystream seeded
 * from encrypt_key, then base64). It is a stand-in for the vendor's private algorithm,
 * NOT that algorithm, and has no security value.
 *
 * Fixture lines (fields separated by one space; the last field runs to end of line):
 *   corpid <corp id>
 *   secret <secret>
 *   chat <seq> <JSON object of one chatdata item, ASCII, one line>
 *   media <sdkfileid> <piece size in bytes> <path of the file with the content>
 *   fail <GetChatData|GetMediaData> <call number, 1-based> <return code>
 */
#define _POSIX_C_SOURCE 200809L /* getline, ssize_t */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- Interface types: layouts identical to the vendor header. ---- */
typedef struct WeWorkFinanceSdk_t WeWorkFinanceSdk_t;

typedef struct Slice_t {
    char *buf;
    int len;
} Slice_t;

typedef struct MediaData {
    char *outindexbuf;
    int out_len;
    char *data;
    int data_len;
    int is_finish;
} MediaData_t;

/* ---- Return codes used by this stand-in. ---- */
enum {
    ERR_PARAM = 10000,
    ERR_PARSE = 10002,
    ERR_SYSTEM = 10003,
    ERR_FILEID = 10005,
    ERR_DECRYPT = 10006,
    ERR_KEY = 10008,
};

static const char MAGIC[] = "TSDK1:"; /* prefix of every plaintext, checked on decrypt */

enum { FN_CHAT = 0, FN_MEDIA = 1 };

struct chat_item {
    unsigned long long seq;
    char *json;
};

struct media_item {
    char *fileid;
    char *path;
    long piece;
};

struct failure {
    int fn;
    long call_no;
    int code;
};

struct WeWorkFinanceSdk_t {
    int ready;
    char *corpid, *secret;
    char *fixture_corpid, *fixture_secret;
    struct chat_item *chats;
    size_t n_chats;
    struct media_item *media;
    size_t n_media;
    struct failure *failures;
    size_t n_failures;
    long calls[2];
};

/* ---- Small helpers. ---- */
static char *dup_str(const char *s) {
    size_t n = strlen(s);
    char *copy = malloc(n + 1);
    if (copy) memcpy(copy, s, n + 1);
    return copy;
}

static int grow(void **array, size_t count, size_t size) {
    void *bigger = realloc(*array, (count + 1) * size);
    if (!bigger) return -1;
    *array = bigger;
    return 0;
}

static void free_fixture(WeWorkFinanceSdk_t *sdk) {
    size_t i;
    for (i = 0; i < sdk->n_chats; i++) free(sdk->chats[i].json);
    for (i = 0; i < sdk->n_media; i++) {
        free(sdk->media[i].fileid);
        free(sdk->media[i].path);
    }
    free(sdk->chats);
    free(sdk->media);
    free(sdk->failures);
    free(sdk->fixture_corpid);
    free(sdk->fixture_secret);
    free(sdk->corpid);
    free(sdk->secret);
    memset(sdk, 0, sizeof(*sdk));
}

/* Splits off the next space-separated field; returns NULL when none is left. */
static char *next_field(char **cursor) {
    char *start = *cursor, *space;
    if (!start || !*start) return NULL;
    space = strchr(start, ' ');
    if (space) {
        *space = '\0';
        *cursor = space + 1;
    } else {
        *cursor = start + strlen(start);
    }
    return start;
}

static int parse_line(WeWorkFinanceSdk_t *sdk, char *line) {
    char *cursor = line;
    char *kind = next_field(&cursor);
    if (!kind) return 0;
    if (strcmp(kind, "corpid") == 0) {
        free(sdk->fixture_corpid);
        return (sdk->fixture_corpid = dup_str(cursor)) ? 0 : -1;
    }
    if (strcmp(kind, "secret") == 0) {
        free(sdk->fixture_secret);
        return (sdk->fixture_secret = dup_str(cursor)) ? 0 : -1;
    }
    if (strcmp(kind, "chat") == 0) {
        char *seq = next_field(&cursor);
        if (!seq || !*cursor || grow((void **)&sdk->chats, sdk->n_chats, sizeof(*sdk->chats)))
            return -1;
        sdk->chats[sdk->n_chats].seq = strtoull(seq, NULL, 10);
        if (!(sdk->chats[sdk->n_chats].json = dup_str(cursor))) return -1;
        sdk->n_chats++;
        return 0;
    }
    if (strcmp(kind, "media") == 0) {
        char *fileid = next_field(&cursor);
        char *piece = next_field(&cursor);
        struct media_item *item;
        if (!fileid || !piece || !*cursor) return -1;
        if (grow((void **)&sdk->media, sdk->n_media, sizeof(*sdk->media))) return -1;
        item = &sdk->media[sdk->n_media];
        item->piece = strtol(piece, NULL, 10);
        item->fileid = dup_str(fileid);
        item->path = dup_str(cursor);
        sdk->n_media++;
        return item->piece > 0 && item->fileid && item->path ? 0 : -1;
    }
    if (strcmp(kind, "fail") == 0) {
        char *fn = next_field(&cursor);
        char *call_no = next_field(&cursor);
        char *code = next_field(&cursor);
        struct failure *f;
        if (!fn || !call_no || !code) return -1;
        if (grow((void **)&sdk->failures, sdk->n_failures, sizeof(*sdk->failures))) return -1;
        f = &sdk->failures[sdk->n_failures++];
        f->fn = strcmp(fn, "GetMediaData") == 0 ? FN_MEDIA : FN_CHAT;
        f->call_no = strtol(call_no, NULL, 10);
        f->code = (int)strtol(code, NULL, 10);
        return 0;
    }
    return -1;
}

static int load_fixture(WeWorkFinanceSdk_t *sdk, const char *path) {
    FILE *file = fopen(path, "rb");
    char *line = NULL;
    size_t capacity = 0;
    ssize_t length;
    int rc = 0;
    if (!file) return -1;
    while (rc == 0 && (length = getline(&line, &capacity, file)) >= 0) {
        while (length > 0 && (line[length - 1] == '\n' || line[length - 1] == '\r'))
            line[--length] = '\0';
        rc = parse_line(sdk, line);
    }
    free(line);
    fclose(file);
    return rc;
}

/* Counts a call and returns the injected failure code for it, or 0. */
static int injected_failure(WeWorkFinanceSdk_t *sdk, int fn) {
    size_t i;
    long call_no = ++sdk->calls[fn];
    for (i = 0; i < sdk->n_failures; i++)
        if (sdk->failures[i].fn == fn && sdk->failures[i].call_no == call_no)
            return sdk->failures[i].code;
    return 0;
}

static int fill_slice(Slice_t *slice, const char *data, size_t len) {
    char *buf = malloc(len + 1);
    if (!buf) return ERR_SYSTEM;
    memcpy(buf, data, len);
    buf[len] = '\0';
    free(slice->buf);
    slice->buf = buf;
    slice->len = (int)len;
    return 0;
}

/* Growable byte buffer for building the GetChatData JSON. */
struct text {
    char *buf;
    size_t len, cap;
};

static int append(struct text *t, const char *s) {
    size_t n = strlen(s);
    if (t->len + n + 1 > t->cap) {
        size_t cap = (t->len + n + 1) * 2;
        char *bigger = realloc(t->buf, cap);
        if (!bigger) return -1;
        t->buf = bigger;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, s, n + 1);
    t->len += n;
    return 0;
}

/* ---- Keystream and base64 for the stand-in cipher (mirrored in build.py). ---- */
static uint64_t seed_from_key(const char *key) {
    uint64_t hash = 1469598103934665603ULL; /* FNV-1a 64 */
    for (; *key; key++) {
        hash ^= (unsigned char)*key;
        hash *= 1099511628211ULL;
    }
    return hash ? hash : 0x9E3779B97F4A7C15ULL;
}

static unsigned char next_key_byte(uint64_t *state) {
    uint64_t x = *state; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return (unsigned char)((x * 0x2545F4914F6CDD1DULL) >> 56);
}

static int b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decodes padded standard base64; returns the length or -1 on bad input. */
static long b64_decode(const char *in, unsigned char *out) {
    size_t n = strlen(in), i;
    long written = 0;
    if (n % 4) return -1;
    for (i = 0; i < n; i += 4) {
        int a = b64_value(in[i]), b = b64_value(in[i + 1]);
        int c = in[i + 2] == '=' ? 0 : b64_value(in[i + 2]);
        int d = in[i + 3] == '=' ? 0 : b64_value(in[i + 3]);
        int pad = (in[i + 2] == '=') + (in[i + 3] == '=');
        if (a < 0 || b < 0 || c < 0 || d < 0) return -1;
        if (pad && i + 4 != n) return -1;
        if (in[i + 2] == '=' && in[i + 3] != '=') return -1;
        out[written++] = (unsigned char)((a << 2) | (b >> 4));
        if (pad < 2) out[written++] = (unsigned char)(((b & 15) << 4) | (c >> 2));
        if (pad < 1) out[written++] = (unsigned char)(((c & 3) << 6) | d);
    }
    return written;
}

/* ---- Exported functions (same prototypes as the vendor header). ---- */
EXPORT WeWorkFinanceSdk_t *NewSdk(void) { return calloc(1, sizeof(WeWorkFinanceSdk_t)); }

EXPORT int Init(WeWorkFinanceSdk_t *sdk, const char *corpid, const char *secret) {
    const char *path = getenv("WECOM_TESTSDK_FIXTURE");
    if (!sdk || !corpid || !*corpid || !secret || !*secret) return ERR_PARAM;
    free_fixture(sdk);
    if (!path || load_fixture(sdk, path) != 0) {
        free_fixture(sdk);
        return ERR_SYSTEM;
    }
    sdk->corpid = dup_str(corpid);
    sdk->secret = dup_str(secret);
    if (!sdk->corpid || !sdk->secret) return ERR_SYSTEM;
    sdk->ready = 1;
    return 0;
}

EXPORT void DestroySdk(WeWorkFinanceSdk_t *sdk) {
    if (!sdk) return;
    free_fixture(sdk);
    free(sdk);
}

EXPORT int GetChatData(WeWorkFinanceSdk_t *sdk, unsigned long long seq, unsigned int limit,
                       const char *proxy, const char *passwd, int timeout,
                       Slice_t *chatDatas) {
    struct text out = {0};
    unsigned int taken = 0;
    size_t i;
    int rc;
    (void)proxy;
    (void)passwd;
    (void)timeout;
    if (!sdk || !sdk->ready || !chatDatas || limit == 0 || limit > 1000) return ERR_PARAM;
    if ((rc = injected_failure(sdk, FN_CHAT)) != 0) return rc;
    if (sdk->fixture_secret && strcmp(sdk->secret, sdk->fixture_secret) != 0) {
        static const char denied[] = "{\"errcode\":40001,\"errmsg\":\"test sdk: wrong secret\"}";
        return fill_slice(chatDatas, denied, sizeof(denied) - 1);
    }
    if (append(&out, "{\"errcode\":0,\"errmsg\":\"ok\",\"chatdata\":[")) goto oom;
    for (i = 0; i < sdk->n_chats && taken < limit; i++) {
        if (sdk->chats[i].seq <= seq) continue;
        if ((taken++ && append(&out, ",")) || append(&out, sdk->chats[i].json)) goto oom;
    }
    if (append(&out, "]}")) goto oom;
    rc = fill_slice(chatDatas, out.buf, out.len);
    free(out.buf);
    return rc;
oom:
    free(out.buf);
    return ERR_SYSTEM;
}

EXPORT int DecryptData(const char *encrypt_key, const char *encrypt_msg, Slice_t *msg) {
    unsigned char *plain;
    long len, i;
    uint64_t state;
    size_t magic_len = sizeof(MAGIC) - 1;
    int rc;
    if (!encrypt_key || !*encrypt_key) return ERR_KEY;
    if (!encrypt_msg || !msg) return ERR_PARAM;
    plain = malloc(strlen(encrypt_msg) / 4 * 3 + 1);
    if (!plain) return ERR_SYSTEM;
    len = b64_decode(encrypt_msg, plain);
    if (len < 0) {
        free(plain);
        return ERR_PARSE;
    }
    state = seed_from_key(encrypt_key);
    for (i = 0; i < len; i++) plain[i] ^= next_key_byte(&state);
    if ((size_t)len < magic_len || memcmp(plain, MAGIC, magic_len) != 0) {
        free(plain);
        return ERR_DECRYPT;
    }
    rc = fill_slice(msg, (const char *)plain + magic_len, (size_t)len - magic_len);
    free(plain);
    return rc;
}

EXPORT int GetMediaData(WeWorkFinanceSdk_t *sdk, const char *indexbuf, const char *sdkFileid,
                        const char *proxy, const char *passwd, int timeout,
                        MediaData_t *media_data) {
    struct media_item *item = NULL;
    unsigned long long offset = 0, range_end = 0, size, next;
    size_t i, count;
    FILE *file;
    long end;
    char *data, index[64];
    int rc;
    (void)proxy;
    (void)passwd;
    (void)timeout;
    if (!sdk || !sdk->ready || !media_data || !sdkFileid || !*sdkFileid) return ERR_PARAM;
    if ((rc = injected_failure(sdk, FN_MEDIA)) != 0) return rc;
    for (i = 0; i < sdk->n_media; i++)
        if (strcmp(sdk->media[i].fileid, sdkFileid) == 0) item = &sdk->media[i];
    if (!item) return ERR_FILEID;
    if (indexbuf && *indexbuf &&
        sscanf(indexbuf, "Range:bytes=%llu-%llu", &offset, &range_end) != 2)
        return ERR_PARAM;
    if (!(file = fopen(item->path, "rb"))) return ERR_SYSTEM;
    if (fseek(file, 0, SEEK_END) != 0 || (end = ftell(file)) < 0) {
        fclose(file);
        return ERR_SYSTEM;
    }
    size = (unsigned long long)end;
    if (offset > size || fseek(file, (long)offset, SEEK_SET) != 0) {
        fclose(file);
        return ERR_PARAM;
    }
    count = (size_t)(size - offset);
    if (count > (size_t)item->piece) count = (size_t)item->piece;
    data = malloc(count ? count : 1);
    if (!data || fread(data, 1, count, file) != count) {
        free(data);
        fclose(file);
        return ERR_SYSTEM;
    }
    fclose(file);
    next = offset + count;
    if (next >= size)
        index[0] = '\0';
    else
        snprintf(index, sizeof(index), "Range:bytes=%llu-%llu", next,
                 next + (unsigned long long)item->piece - 1);
    free(media_data->data);
    free(media_data->outindexbuf);
    media_data->data = data;
    media_data->data_len = (int)count;
    media_data->outindexbuf = dup_str(index);
    media_data->out_len = (int)strlen(index);
    media_data->is_finish = next >= size;
    return media_data->outindexbuf ? 0 : ERR_SYSTEM;
}

EXPORT Slice_t *NewSlice(void) { return calloc(1, sizeof(Slice_t)); }

EXPORT void FreeSlice(Slice_t *slice) {
    if (!slice) return;
    free(slice->buf);
    free(slice);
}

EXPORT char *GetContentFromSlice(Slice_t *slice) { return slice ? slice->buf : NULL; }

EXPORT int GetSliceLen(Slice_t *slice) { return slice ? slice->len : 0; }

EXPORT MediaData_t *NewMediaData(void) { return calloc(1, sizeof(MediaData_t)); }

EXPORT void FreeMediaData(MediaData_t *media_data) {
    if (!media_data) return;
    free(media_data->outindexbuf);
    free(media_data->data);
    free(media_data);
}

EXPORT char *GetOutIndexBuf(MediaData_t *media_data) {
    return media_data ? media_data->outindexbuf : NULL;
}

EXPORT char *GetData(MediaData_t *media_data) { return media_data ? media_data->data : NULL; }

EXPORT int GetIndexLen(MediaData_t *media_data) { return media_data ? media_data->out_len : 0; }

EXPORT int GetDataLen(MediaData_t *media_data) { return media_data ? media_data->data_len : 0; }

EXPORT int IsMediaDataFinish(MediaData_t *media_data) {
    return media_data ? media_data->is_finish : 0;
}
