// local-overlay's fast path, compiled into fuse-native's addon (scripts/build-native.sh copies
// this file next to fuse-native.c, whose patched version includes it; native-notes/README.md
// explains why and how).
//
// fuse-native hands every request from a libfuse thread to the one JS thread and waits: about
// 30 µs of handoff per request, where the work itself (an lstat, a pread) takes 2. This file
// answers the requests whose answer needs no JS-side decision, on the libfuse thread itself:
//
// - Paths inside a store object whose layer the JS side has already decided. The JS side
//   pushes its top-level index here (lo_set/lo_delete/lo_reset): every upper entry (object or
//   whiteout), and each lower object once a lookup of it has been answered (so lazy mode's
//   closure copy has run). Below the top level a merged path is plain passthrough to its
//   layer, so getattr, readlink, open, read, readdir and the like are a syscall each, and in
//   an upper object so are create, write, mkdir, unlink, rename, chmod, utimens...
// - Lookups of absent top-level names: not in the upper index and not in the lower dir (an
//   lstat). A name the lower dir has but the index does not know yet goes to JS.
//
// Everything else goes to the JS handler (it "passes"): the store root itself, every change of a
// top-level name (the JS index and the metadata module must see it), every change refused on
// the lower layer (EROFS/EPERM/ENOSPC/EMLINK and their bookkeeping), names that may be
// libfuse's .fuse_hidden* (JS redirects its exact ones to the work dir), lower names the index
// has not settled (JS asks the lower DB whether they are registered store objects), inode numbers that need the JS inode table, and anything while
// tracing is on (lo_enable(0)). An error at the top level also goes to JS, which decides
// what the name means; below it the layer's errno is the answer.
//
// Inode numbers follow layers/inodes.ts: ino * 2 + layer for an inode of the layer's own device
// below 2^30, else the JS table (so: passes). File handles opened here carry LO_FH_FAST; JS
// handles are small fds and never have it.

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <time.h>

#define LO_UPPER 0
#define LO_LOWER 1
#define LO_WHITEOUT 2
// lo_resolve's answers besides a layer.
#define LO_R_ABSENT 3
#define LO_R_PASS 4

#define LO_FH_FAST (1ULL << 40)
#define LO_FH_LOWER (1ULL << 41)
#define LO_FH_FD(fh) ((int) ((fh) & 0xFFFFFFFFu))

#define LO_COMPUTED_INO_LIMIT (1ULL << 30)
#define LO_UNKNOWN_INO 0xffffffffu
#define LO_NAME_MAX 255
// Lower entries are dropped (and re-learnt through JS) beyond this many.
#define LO_MAX_LOWER_ENTRIES (1u << 19)

// Counters, in the order lo_counters() returns them (src/fuse/fast-path.ts names them).
enum {
  LO_C_GETATTR, LO_C_FGETATTR, LO_C_READLINK, LO_C_OPEN, LO_C_CREATE, LO_C_READ, LO_C_WRITE,
  LO_C_RELEASE, LO_C_FSYNC, LO_C_FTRUNCATE, LO_C_READDIR, LO_C_MKDIR, LO_C_UNLINK, LO_C_RMDIR,
  LO_C_SYMLINK, LO_C_RENAME, LO_C_LINK, LO_C_CHMOD, LO_C_CHOWN, LO_C_TRUNCATE, LO_C_UTIMENS,
  LO_C_UPPER, LO_C_LOWER, LO_C_MISS, LO_C_PASSED, LO_C_LISTING, LO_C_PASSTHROUGH, LO_C_READDIRPLUS,
  LO_C_HANDOFF, LO_C_STALL, LO_C_POLLED,
  LO_C_COUNT
};

typedef struct lo_entry {
  struct lo_entry *next;
  uint32_t hash;
  uint8_t kind;
  uint16_t len;
  char name[];
} lo_entry;

typedef struct {
  pthread_rwlock_t lock;
  lo_entry **buckets;
  size_t nbuckets;   // a power of two
  size_t count;
  size_t lower_count;
  // Lower entries the table holds at most (LO_MAX_LOWER_ENTRIES; fewer in tests): at this many,
  // they are all forgotten and come back as their lookups reach JS again.
  size_t lower_max;

  char dir[2][PATH_MAX];
  size_t dir_len[2];
  // The layers' dirs, open: calls name a file relative to its layer's dir, so the
  // kernel walks only the path below the store (a merged path is the same path in its layer).
  int fd[2];
  dev_t dev[2];
  // The layer is not on a local filesystem (NFS, FUSE...): any call on it may take long, so the
  // reader role goes to another worker before one (lo_on).
  int slow[2];

  // Where the overlay keeps libfuse's hidden files (WORK/hidden, resolved), "" if unknown:
  // lo_drop_orphan removes those libfuse can no longer name.
  char hidden[PATH_MAX];
  size_t hidden_len;

  // The channel the mount is served through ("the channel"), and whether config ran.
  struct lo_chan *chan;
  int configured;
  // Lower files at least this long are opened with FUSE passthrough; -1: none (the channel).
  int64_t passthrough_min;
  // How long the reader polls the device for the next request before it sleeps ("polling").
  int64_t poll_ns;

  int enabled;
  // Set when the table could not take an entry: it no longer has every upper name, so the
  // fast path (which answers "absent" from it) stays off for good.
  int failed;
  uint64_t counters[LO_C_COUNT];
} lo_fast;

// The JS-backed operations, called when the fast path passes.
static struct fuse_operations lo_js;

// Gives the reader role away before something that may take long ("the reader", below).
static void lo_reader_yield(void);
static inline void lo_on(lo_fast *f, int layer);

static inline void lo_count(lo_fast *f, int c) {
  __atomic_fetch_add(&f->counters[c], 1, __ATOMIC_RELAXED);
}

// ---- the top-level table ---------------------------------------------------------------------

static uint32_t lo_hash(const char *s, size_t n) {
  uint32_t h = 2166136261u; // FNV-1a
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t) s[i]) * 16777619u;
  return h;
}

static lo_entry **lo_slot(lo_fast *f, const char *name, size_t len, uint32_t h) {
  lo_entry **p = &f->buckets[h & (f->nbuckets - 1)];
  while (*p && !((*p)->hash == h && (*p)->len == len && memcmp((*p)->name, name, len) == 0)) p = &(*p)->next;
  return p;
}

// Kind of a top-level name, -1 when the table does not have it, or LO_K_OFF when the fast path
// is off. Takes the read lock. The JS side switches the fast path off before it empties and
// refills the table (fast-path.ts rebuild), and every change takes the write lock: so a table
// read here under the lock while the fast path is on is whole, never half filled, even for a
// request that found the fast path on just before the switch.
#define LO_K_OFF (-2)
static int lo_kind(lo_fast *f, const char *name, size_t len) {
  uint32_t h = lo_hash(name, len);
  pthread_rwlock_rdlock(&f->lock);
  int kind;
  if (!__atomic_load_n(&f->enabled, __ATOMIC_ACQUIRE)) {
    kind = LO_K_OFF;
  } else {
    lo_entry *e = *lo_slot(f, name, len, h);
    kind = e ? e->kind : -1;
  }
  pthread_rwlock_unlock(&f->lock);
  return kind;
}

static void lo_clear_locked(lo_fast *f, int only_lower) {
  for (size_t i = 0; i < f->nbuckets; i++) {
    lo_entry **p = &f->buckets[i];
    while (*p) {
      lo_entry *e = *p;
      if (only_lower && e->kind != LO_LOWER) {
        p = &e->next;
        continue;
      }
      *p = e->next;
      free(e);
      f->count--;
    }
  }
  f->lower_count = 0;
}

static void lo_grow_locked(lo_fast *f) {
  size_t n = f->nbuckets * 2;
  lo_entry **b = calloc(n, sizeof(*b));
  if (b == NULL) return; // stays correct, only slower
  for (size_t i = 0; i < f->nbuckets; i++) {
    lo_entry *e = f->buckets[i];
    while (e) {
      lo_entry *next = e->next;
      e->next = b[e->hash & (n - 1)];
      b[e->hash & (n - 1)] = e;
      e = next;
    }
  }
  free(f->buckets);
  f->buckets = b;
  f->nbuckets = n;
}

// Sets (kind >= 0) or deletes (kind < 0) a name. Returns 0, or -ENOMEM after which the name is
// absent from the table and the fast path is off for good (failed).
static int lo_put(lo_fast *f, const char *name, size_t len, int kind) {
  uint32_t h = lo_hash(name, len);
  int res = 0;
  pthread_rwlock_wrlock(&f->lock);
  lo_entry **p = lo_slot(f, name, len, h);
  if (*p) {
    lo_entry *e = *p;
    if (e->kind == LO_LOWER) f->lower_count--;
    *p = e->next;
    free(e);
    f->count--;
  }
  if (kind >= 0) {
    if (kind == LO_LOWER && f->lower_count >= f->lower_max) lo_clear_locked(f, 1);
    if (f->count >= f->nbuckets) lo_grow_locked(f);
    // `p` is the `next` field of the chain's last entry (or the bucket): the clear may have
    // freed that entry, the growth moved the buckets. Linked through a stale `p`, the new entry
    // would be written into freed memory (heap corruption) and be missing from the table.
    p = lo_slot(f, name, len, h);
    lo_entry *e = malloc(sizeof(lo_entry) + len);
    if (e == NULL) {
      res = -ENOMEM;
      __atomic_store_n(&f->failed, 1, __ATOMIC_RELEASE);
      __atomic_store_n(&f->enabled, 0, __ATOMIC_RELEASE);
    } else {
      e->hash = h;
      e->kind = (uint8_t) kind;
      e->len = (uint16_t) len;
      memcpy(e->name, name, len);
      e->next = *p;
      *p = e;
      f->count++;
      if (kind == LO_LOWER) f->lower_count++;
    }
  }
  pthread_rwlock_unlock(&f->lock);
  return res;
}

// ---- resolution ------------------------------------------------------------------------------

// Nix's base32 alphabet: 0-9 and a-z without e, o, u, t.
static int lo_is_hash_char(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z' && c != 'e' && c != 'o' && c != 'u' && c != 't');
}

static int lo_is_name_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
    || c == '+' || c == '-' || c == '.' || c == '_' || c == '?' || c == '=';
}

// store/store-path.ts isStoreObjectName.
static int lo_is_store_name(const char *s, size_t n) {
  if (n < 34 || n > 32 + 1 + 211 || s[32] != '-' || s[33] == '.') return 0;
  for (size_t i = 0; i < 32; i++) if (!lo_is_hash_char(s[i])) return 0;
  for (size_t i = 33; i < n; i++) if (!lo_is_name_char(s[i])) return 0;
  return 1;
}

// Names that may be libfuse's for unlinked-but-open files: JS decides (overlay.ts isHiddenName).
static int lo_is_hidden(const char *path) {
  const char *base = strrchr(path, '/');
  return base != NULL && strncmp(base + 1, ".fuse_hidden", 12) == 0;
}

// The layer of a merged path (LO_UPPER/LO_LOWER), LO_R_ABSENT, or LO_R_PASS. *top is set
// when the path is a top-level name.
static int lo_resolve(lo_fast *f, const char *path, int *top) {
  if (path == NULL || path[0] != '/') return LO_R_PASS;
  const char *name = path + 1;
  const char *slash = strchr(name, '/');
  size_t len = slash ? (size_t) (slash - name) : strlen(name);
  *top = slash == NULL;
  if (len == 0 || len > LO_NAME_MAX || lo_is_hidden(path)) return LO_R_PASS;

  int kind = lo_kind(f, name, len);
  if (kind == LO_K_OFF) return LO_R_PASS;
  if (kind == LO_UPPER || kind == LO_LOWER) {
    lo_count(f, kind == LO_UPPER ? LO_C_UPPER : LO_C_LOWER);
    return kind;
  }
  if (kind == LO_WHITEOUT) return *top ? LO_R_ABSENT : LO_R_PASS;
  // Not in the table: decide only "absent", and only for a top-level name.
  if (!*top) return LO_R_PASS;
  if (!lo_is_store_name(name, len)) return LO_R_ABSENT; // not upper (the table has every upper name), not a lower object
  struct stat st;
  lo_on(f, LO_LOWER);
  if (fstatat(f->fd[LO_LOWER], name, &st, AT_SYMLINK_NOFOLLOW) == 0) return LO_R_PASS; // a lower object JS has not seen (or bookkeeping)
  return (errno == ENOENT || errno == ENOTDIR) ? LO_R_ABSENT : LO_R_PASS;
}

// A merged path below the root, relative to its layer's dir (f->fd).
static inline const char *lo_rel(const char *path) {
  return path + 1;
}

// The real path of a merged path in a layer; 0, or -1 when it does not fit.
static int lo_real(lo_fast *f, int layer, const char *path, char *real) {
  size_t n = strlen(path);
  if (f->dir_len[layer] + n >= PATH_MAX) return -1;
  memcpy(real, f->dir[layer], f->dir_len[layer]);
  memcpy(real + f->dir_len[layer], path, n + 1);
  return 0;
}

// The merged inode number (layers/inodes.ts); 0 when only the JS table can give it.
static int lo_map_ino(lo_fast *f, int layer, struct stat *st) {
  if (st->st_dev != f->dev[layer] || (uint64_t) st->st_ino >= LO_COMPUTED_INO_LIMIT) return 0;
  st->st_ino = st->st_ino * 2 + layer;
  st->st_dev = 0;
  return 1;
}

// The fast path's state, on or off.
static lo_fast *lo_state(void) {
  struct fuse_context *ctx = fuse_get_context();
  fuse_thread_t *ft = ctx ? (fuse_thread_t *) ctx->private_data : NULL;
  return ft ? __atomic_load_n(&ft->fast, __ATOMIC_ACQUIRE) : NULL;
}

// `f` while the fast path is on, else NULL.
static inline lo_fast *lo_if_on(lo_fast *f) {
  return (f && __atomic_load_n(&f->enabled, __ATOMIC_ACQUIRE)) ? f : NULL;
}

// The fast path's state while it is on, else NULL.
static lo_fast *lo_get(void) {
  return lo_if_on(lo_state());
}

// Before a call on `layer` (f: the state, or NULL to look it up): on a layer that may be slow,
// the reader role goes to another worker first.
static inline void lo_on(lo_fast *f, int layer) {
  if (f == NULL) f = lo_state();
  if (f == NULL || f->slow[layer]) lo_reader_yield();
}

static inline int lo_is_fast_fh(struct fuse_file_info *fi) {
  return fi != NULL && (fi->fh & LO_FH_FAST);
}

// A request on a native handle: the reader role goes first if the handle's layer may be slow
// (lo_on). Returns the fast path's state while it is on (for the counters), else NULL.
static inline lo_fast *lo_on_fh(struct fuse_file_info *fi) {
  lo_fast *f = lo_state();
  lo_on(f, (fi->fh & LO_FH_LOWER) ? LO_LOWER : LO_UPPER);
  return lo_if_on(f);
}

// Whether a path lies in an upper object (or is one, with allow_top), for a change made here
// (relative to f->fd[LO_UPPER]: lo_rel); else 0 (pass to JS).
static int lo_in_upper(lo_fast *f, const char *path, int allow_top) {
  int top = 0;
  if (lo_resolve(f, path, &top) != LO_UPPER || (top && !allow_top)) return 0;
  lo_on(f, LO_UPPER);
  return 1;
}

#define LO_PASS_TO(op, ...) do { if (f) lo_count(f, LO_C_PASSED); return lo_js.op(__VA_ARGS__); } while (0)

// ---- operations ------------------------------------------------------------------------------

static int lo_getattr(const char *path, struct stat *st) {
  lo_fast *f = lo_get();
  if (f == NULL) return lo_js.getattr(path, st);
  if (path != NULL && path[0] == '/' && path[1] == '\0') {
    // The store root: the upper dir's attributes, inode 1 (overlay.ts rootAttr).
    lo_on(f, LO_UPPER);
    if (fstat(f->fd[LO_UPPER], st) < 0) LO_PASS_TO(getattr, path, st);
    st->st_ino = 1;
    st->st_dev = 0;
    lo_count(f, LO_C_GETATTR);
    return 0;
  }
  int top = 0;
  int r = lo_resolve(f, path, &top);
  if (r == LO_R_ABSENT) {
    lo_count(f, LO_C_MISS);
    return -ENOENT;
  }
  if (r == LO_R_PASS) LO_PASS_TO(getattr, path, st);
  lo_on(f, r);
  if (fstatat(f->fd[r], lo_rel(path), st, AT_SYMLINK_NOFOLLOW) < 0) {
    if (top) LO_PASS_TO(getattr, path, st);
    return -errno;
  }
  if (!lo_map_ino(f, r, st)) LO_PASS_TO(getattr, path, st);
  lo_count(f, LO_C_GETATTR);
  return 0;
}

static int lo_fgetattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
  if (!lo_is_fast_fh(fi)) return lo_js.fgetattr(path, st, fi);
  lo_fast *f = lo_on_fh(fi);
  int layer = (fi->fh & LO_FH_LOWER) ? LO_LOWER : LO_UPPER;
  if (fstat(LO_FH_FD(fi->fh), st) < 0) return -errno;
  if (f != NULL && lo_map_ino(f, layer, st)) {
    lo_count(f, LO_C_FGETATTR);
    return 0;
  }
  if (path == NULL) return -ESTALE;
  return lo_js.getattr(path, st);
}

static int lo_readlink(const char *path, char *buf, size_t size) {
  lo_fast *f = lo_get();
  if (f == NULL || size == 0) return lo_js.readlink(path, buf, size);
  int top = 0;
  int r = lo_resolve(f, path, &top);
  if (r == LO_R_ABSENT) return -ENOENT;
  if (r == LO_R_PASS) LO_PASS_TO(readlink, path, buf, size);
  lo_on(f, r);
  ssize_t n = readlinkat(f->fd[r], lo_rel(path), buf, size - 1);
  if (n < 0) {
    if (top) LO_PASS_TO(readlink, path, buf, size);
    return -errno;
  }
  buf[n] = '\0';
  lo_count(f, LO_C_READLINK);
  return 0;
}

// O_DIRECT stays with the kernel: it asks for the caller's own aligned buffers, but the file
// is read and written here with libfuse's request buffers, which are not aligned, so every
// pread/pwrite failed with EINVAL. The kernel still serves an O_DIRECT open without its page
// cache (fuse_direct_IO: each read or write is a request); a passthrough file is read by the
// kernel from a backing file it opens itself with the caller's flags, O_DIRECT included, as
// kernel OverlayFS does. overlay.ts openReal strips it too.
// (glibc names O_DIRECT only under _GNU_SOURCE, which fuse-native.c does not define.)
#ifndef O_DIRECT
#define O_DIRECT __O_DIRECT
#endif
#define LO_OPEN_DROPPED (O_CREAT | O_EXCL | O_DIRECT)

static void lo_set_fh(struct fuse_file_info *fi, int layer, int fd) {
  fi->fh = LO_FH_FAST | (layer == LO_LOWER ? LO_FH_LOWER : 0) | (uint64_t) (uint32_t) fd;
}

static int lo_open(const char *path, struct fuse_file_info *fi) {
  lo_fast *f = lo_get();
  if (f == NULL) return lo_js.open(path, fi);
  int top = 0;
  int r = lo_resolve(f, path, &top);
  if (r == LO_R_ABSENT) return -ENOENT;
  // O_APPEND without write access writes nothing: a read-only filesystem allows it (overlay.ts open).
  int writes = (fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC) != 0;
  if (r == LO_R_PASS || (r == LO_LOWER && writes)) LO_PASS_TO(open, path, fi);
  lo_on(f, r);
  // O_CLOEXEC on every descriptor opened here: the daemon spawns children (the GC lock's flock
  // helper, fusermount), which must not inherit the clients' files.
  int fd = openat(f->fd[r], lo_rel(path), (fi->flags & ~LO_OPEN_DROPPED) | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (top) LO_PASS_TO(open, path, fi);
    return -errno;
  }
  lo_set_fh(fi, r, fd);
  lo_count(f, LO_C_OPEN);
  return 0;
}

static int lo_make_file(const char *path, mode_t mode, struct fuse_file_info *fi) {
  lo_fast *f = lo_get();
  if (f == NULL || !lo_in_upper(f, path, 0)) LO_PASS_TO(create, path, mode, fi);
  int fd = openat(f->fd[LO_UPPER], lo_rel(path), (fi->flags & ~O_DIRECT) | O_CREAT | O_NOFOLLOW | O_CLOEXEC, mode & 07777);
  if (fd < 0) return -errno;
  lo_set_fh(fi, LO_UPPER, fd);
  lo_count(f, LO_C_CREATE);
  return 0;
}

static int lo_read(const char *path, char *buf, size_t len, off_t off, struct fuse_file_info *fi) {
  if (!lo_is_fast_fh(fi)) return lo_js.read(path, buf, len, off, fi);
  // One pread: store files are regular files, which read short only at their end.
  lo_fast *f = lo_on_fh(fi);
  ssize_t n;
  do n = pread(LO_FH_FD(fi->fh), buf, len, off); while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  if (f) lo_count(f, LO_C_READ);
  return (int) n;
}

static int lo_write(const char *path, const char *buf, size_t len, off_t off, struct fuse_file_info *fi) {
  if (!lo_is_fast_fh(fi)) return lo_js.write(path, buf, len, off, fi);
  lo_fast *f = lo_on_fh(fi);
  int fd = LO_FH_FD(fi->fh);
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, buf + done, len - done, off + (off_t) done);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (done > 0) break;
      return -errno;
    }
    done += (size_t) n;
  }
  if (f) lo_count(f, LO_C_WRITE);
  return (int) done;
}

// Whether `base` is exactly a name libfuse 2.9 gives a hidden file: ".fuse_hidden" and the node
// id and a counter as %08x each (overlay.ts HIDDEN_NAME).
static int lo_is_hidden_name(const char *base) {
  if (strncmp(base, ".fuse_hidden", 12) != 0) return 0;
  for (int i = 12; i < 28; i++) if (!((base[i] >= '0' && base[i] <= '9') || (base[i] >= 'a' && base[i] <= 'f'))) return 0;
  return base[28] == '\0';
}

// A file unlinked while open is renamed by libfuse to a .fuse_hidden name in its directory,
// which the overlay keeps in WORK/hidden (overlay.ts), and libfuse unlinks it at the last
// RELEASE through its path. Kept there, the file no longer holds its directory non-empty, so
// the directory can go while the file is open (rm -rf, Nix's GC, of an object in use); libfuse
// then has no path for the node, releases it with a null path and never unlinks it: it stayed
// in WORK/hidden, its blocks taken, until the next mount. A RELEASE with a null path is such a
// node (without hard_remove a node loses its path only so), so the file its descriptor names,
// if it is one of those in WORK/hidden, goes here. Other handles of the node keep it open.
static void lo_drop_orphan(int fd) {
  lo_fast *f = lo_state();
  if (f == NULL || !__atomic_load_n(&f->configured, __ATOMIC_ACQUIRE) || f->hidden_len == 0 || fd < 0) return;
  char link[64], real[PATH_MAX];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, real, sizeof(real) - 1);
  if (n <= 0) return;
  real[n] = '\0';
  if ((size_t) n != f->hidden_len + 1 + 28 || strncmp(real, f->hidden, f->hidden_len) != 0 || real[f->hidden_len] != '/') return;
  if (!lo_is_hidden_name(real + f->hidden_len + 1)) return; // also " (deleted)": gone already
  unlink(real);
}

static int lo_release(const char *path, struct fuse_file_info *fi) {
  if (path == NULL && fi != NULL) lo_drop_orphan(LO_FH_FD(fi->fh));
  if (!lo_is_fast_fh(fi)) return lo_js.release(path, fi);
  lo_fast *f = lo_on_fh(fi);
  close(LO_FH_FD(fi->fh));
  if (f) lo_count(f, LO_C_RELEASE);
  return 0;
}

static int lo_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
  if (!lo_is_fast_fh(fi)) return lo_js.fsync(path, datasync, fi);
  lo_reader_yield(); // waits for the disk, on any filesystem
  int fd = LO_FH_FD(fi->fh);
  if ((datasync ? fdatasync(fd) : fsync(fd)) < 0) return -errno;
  lo_fast *f = lo_get();
  if (f) lo_count(f, LO_C_FSYNC);
  return 0;
}

static int lo_ftruncate(const char *path, off_t size, struct fuse_file_info *fi) {
  if (!lo_is_fast_fh(fi)) return lo_js.ftruncate(path, size, fi);
  if (fi->fh & LO_FH_LOWER) return -EROFS;
  lo_fast *f = lo_on_fh(fi);
  if (ftruncate(LO_FH_FD(fi->fh), size) < 0) return -errno;
  if (f) lo_count(f, LO_C_FTRUNCATE);
  return 0;
}

// ---- listings JS serves ------------------------------------------------------------------------

// JS lists a directory whole (the store dir, whose names come from both layers and the table,
// and any directory while the fast path is off). Filled at offset 0, libfuse would keep that
// listing in the handle and count offsets in bytes into it; the channel serves READDIRs
// without a handle, so a continuation may reach a handle that listed the directory at another
// time, and byte offsets into another copy skip or repeat names that were there throughout
// whenever the directory changed in between (seen: 1,918 of 2,000 names missing from a
// listing of the store dir). So every entry JS lists gets a key from its name, the listing is
// kept sorted by key, each entry is filled with its own key as the offset to go on from, and a
// continuation from `off` gives the entries whose keys are above it, from whichever copy is
// newest: a name there from the listing's start to its end is in every copy made meanwhile,
// at the same key, so it comes exactly once. ext4 lists by hashes of names for the same
// reason. A key is 56 bits of a hash of the name and, below them, the name's place (0-127)
// among names with the same 56 bits; '.' and '..' keep keys 1 and 2 and come first. Two names
// with the same 56 bits whose group changes between two READDIRs of one listing can still be
// skipped or repeated (for a million names, about one listing in 10^5 has such a pair at all).
// A copy is kept (up to LO_LISTINGS directories) from a listing's start until a continuation
// finds nothing left or a newer copy replaces it; a continuation with no copy lists again.

#define LO_LISTINGS 16
#define LO_KEY_GROUP 7 // bits of the place among names sharing a hash

typedef struct {
  uint64_t key;
  size_t at; // the name's offset into the listing's names, while JS fills it
  const char *name;
  ino_t ino;
  mode_t mode;
  int stat; // JS gave the entry's inode and type
} lo_jsent;

typedef struct {
  char *path;
  uint64_t made; // order of the JS listings (lo_listing_clock)
  int refs;
  int failed; // out of memory while collecting
  lo_jsent *ents;
  size_t n, cap;
  char *names;
  size_t names_len, names_cap;
} lo_listing;

static pthread_mutex_t lo_listings_lock = PTHREAD_MUTEX_INITIALIZER;
static lo_listing *lo_listings[LO_LISTINGS];
static uint64_t lo_listing_clock;

static uint64_t lo_name_hash(const char *s) {
  uint64_t h = 14695981039346656037ull; // FNV-1a, then murmur3's finaliser to spread it
  for (; *s; s++) h = (h ^ (uint8_t) *s) * 1099511628211ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

static void lo_listing_free(lo_listing *l) {
  free(l->path);
  free(l->ents);
  free(l->names);
  free(l);
}

static void lo_listing_put(lo_listing *l) {
  pthread_mutex_lock(&lo_listings_lock);
  int last = --l->refs == 0;
  pthread_mutex_unlock(&lo_listings_lock);
  if (last) lo_listing_free(l);
}

// The filler JS's listing goes to. It runs on the JS thread while the libfuse thread that asked
// waits, so the copy needs no lock; its first entry dates it.
static int lo_collect(void *buf, const char *name, const struct stat *st, off_t off) {
  (void) off;
  lo_listing *l = buf;
  if (l->made == 0) l->made = __atomic_add_fetch(&lo_listing_clock, 1, __ATOMIC_RELAXED);
  size_t len = strlen(name) + 1;
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    lo_jsent *e = realloc(l->ents, cap * sizeof(*e));
    if (e == NULL) return l->failed = 1;
    l->ents = e;
    l->cap = cap;
  }
  if (l->names_len + len > l->names_cap) {
    size_t cap = l->names_cap ? l->names_cap * 2 : 4096;
    while (cap < l->names_len + len) cap *= 2;
    char *p = realloc(l->names, cap);
    if (p == NULL) return l->failed = 1;
    l->names = p;
    l->names_cap = cap;
  }
  memcpy(l->names + l->names_len, name, len);
  lo_jsent *e = &l->ents[l->n++];
  e->at = l->names_len;
  e->stat = st != NULL;
  e->ino = st ? st->st_ino : 0;
  e->mode = st ? st->st_mode : 0;
  int dot = strcmp(name, ".") == 0, dotdot = strcmp(name, "..") == 0;
  uint64_t h = lo_name_hash(name) >> (64 - 56);
  e->key = dot ? 1 : dotdot ? 2 : (h == 0 ? 1 : h) << LO_KEY_GROUP;
  l->names_len += len;
  return 0;
}

static int lo_jsent_cmp(const void *a, const void *b) {
  const lo_jsent *x = a, *y = b;
  if (x->key != y->key) return x->key < y->key ? -1 : 1;
  return strcmp(x->name, y->name);
}

// Sorts the copy by key and numbers the names that share a hash.
static void lo_listing_sort(lo_listing *l) {
  for (size_t i = 0; i < l->n; i++) l->ents[i].name = l->names + l->ents[i].at;
  qsort(l->ents, l->n, sizeof(*l->ents), lo_jsent_cmp);
  const uint64_t group = ~(uint64_t) ((1 << LO_KEY_GROUP) - 1);
  uint64_t place = 0;
  for (size_t i = 1; i < l->n; i++) {
    uint64_t base = l->ents[i].key;
    if (base > 2 && base == (l->ents[i - 1].key & group)) {
      if (place < (1 << LO_KEY_GROUP) - 1) place++;
      l->ents[i].key = base | place;
    } else {
      place = 0;
    }
  }
}

// The newest copy of `path`'s listing, with a reference; or NULL.
static lo_listing *lo_listing_find(const char *path) {
  lo_listing *l = NULL;
  pthread_mutex_lock(&lo_listings_lock);
  for (int i = 0; i < LO_LISTINGS; i++) {
    if (lo_listings[i] && strcmp(lo_listings[i]->path, path) == 0) {
      l = lo_listings[i];
      l->refs++;
      break;
    }
  }
  pthread_mutex_unlock(&lo_listings_lock);
  return l;
}

// Keeps `l` as its directory's copy unless a newer one is kept; the oldest kept copy makes room.
static void lo_listing_keep(lo_listing *l) {
  lo_listing *gone = NULL;
  pthread_mutex_lock(&lo_listings_lock);
  int slot = -1;
  for (int i = 0; i < LO_LISTINGS; i++) {
    if (lo_listings[i] && strcmp(lo_listings[i]->path, l->path) == 0) {
      slot = lo_listings[i]->made < l->made ? i : -2;
      break;
    }
  }
  if (slot == -1) {
    for (int i = 0; i < LO_LISTINGS; i++) {
      if (lo_listings[i] == NULL) { slot = i; break; }
      if (slot < 0 || lo_listings[i]->made < lo_listings[slot]->made) slot = i;
    }
  }
  if (slot >= 0) {
    gone = lo_listings[slot];
    if (gone && --gone->refs > 0) gone = NULL;
    lo_listings[slot] = l;
    l->refs++;
  }
  pthread_mutex_unlock(&lo_listings_lock);
  if (gone) lo_listing_free(gone);
}

// Lets `l` go as its directory's copy (its listing has ended).
static void lo_listing_drop(lo_listing *l) {
  pthread_mutex_lock(&lo_listings_lock);
  for (int i = 0; i < LO_LISTINGS; i++) {
    if (lo_listings[i] == l) {
      lo_listings[i] = NULL;
      l->refs--; // the caller still holds one
      break;
    }
  }
  pthread_mutex_unlock(&lo_listings_lock);
}

// readdir through JS, with offsets that hold across copies (above).
static int lo_js_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off, struct fuse_file_info *fi) {
  lo_listing *l = off == 0 ? NULL : lo_listing_find(path);
  if (l == NULL) {
    l = calloc(1, sizeof(*l));
    if (l == NULL || (l->path = strdup(path)) == NULL) {
      free(l);
      return -ENOMEM;
    }
    l->refs = 1;
    int r = lo_js.readdir(path, l, lo_collect, 0, fi);
    if (r == 0 && l->failed) r = -ENOMEM;
    if (r != 0) {
      lo_listing_put(l);
      return r;
    }
    lo_listing_sort(l);
    lo_listing_keep(l);
  }
  size_t lo = 0, hi = l->n; // the first entry whose key is above off
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (l->ents[mid].key <= (uint64_t) off) lo = mid + 1;
    else hi = mid;
  }
  if (lo == l->n && off != 0) lo_listing_drop(l);
  struct stat st;
  for (size_t i = lo; i < l->n; i++) {
    const lo_jsent *e = &l->ents[i];
    memset(&st, 0, sizeof(st));
    st.st_ino = e->ino;
    st.st_mode = e->mode;
    if (filler(buf, e->name, e->stat ? &st : NULL, (off_t) e->key)) break; // the reply is full
  }
  lo_listing_put(l);
  return 0;
}

// Each entry goes to libfuse's filler with the layer's own offset for the entry after it (its
// d_off, what telldir gives), and a listing continued from offset `off` starts where seekdir
// puts it, as kernel OverlayFS lists a directory that is not merged. So libfuse does not keep
// the listing (it does only for entries filled at offset 0) and the kernel's offsets do not
// depend on which handle served them: the channel serves READDIRs without a handle, and a
// continuation may come to a handle that listed the directory at another time, or to a new one
// (lo_dir_handle). Byte offsets into one listing, as before, skipped names that were there
// throughout whenever the directory had changed in between. The layer's offsets hold across
// changes (ext4's are hashes of the names, tmpfs's are kept per entry), as they do for any
// process listing the directory.
static int lo_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off, struct fuse_file_info *fi) {
  lo_fast *f = lo_get();
  if (f == NULL) return lo_js_readdir(path, buf, filler, off, fi);
  int top = 0;
  int r = lo_resolve(f, path, &top);
  if (r == LO_R_ABSENT) return -ENOENT;
  if (r == LO_R_PASS) {
    lo_count(f, LO_C_PASSED);
    return lo_js_readdir(path, buf, filler, off, fi);
  }
  lo_on(f, r);
  int dfd = openat(f->fd[r], lo_rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *d = dfd < 0 ? NULL : fdopendir(dfd);
  if (d == NULL) {
    if (dfd >= 0) close(dfd);
    if (top) {
      lo_count(f, LO_C_PASSED);
      return lo_js_readdir(path, buf, filler, off, fi);
    }
    return -errno;
  }
  if (off != 0) seekdir(d, off);
  // d_ino and d_type from the layer: the same numbers getattr gives (lo_map_ino), so that
  // `find`, `ls` and Nix's optimiser need no stat to learn an entry's type.
  struct dirent *de;
  struct stat st;
  int err = 0;
  for (;;) {
    errno = 0;
    de = readdir(d);
    if (de == NULL) {
      err = errno;
      break;
    }
    // Offset 0 would make libfuse keep the listing (and mix both ways in one buffer); Linux
    // filesystems give every entry a positive one.
    if (de->d_off <= 0) {
      err = EIO;
      break;
    }
    int dots = de->d_name[0] == '.' && (de->d_name[1] == '\0' || (de->d_name[1] == '.' && de->d_name[2] == '\0'));
    if (dots) {
      if (filler(buf, de->d_name, NULL, de->d_off)) break;
      continue;
    }
    memset(&st, 0, sizeof(st));
    st.st_ino = (uint64_t) de->d_ino < LO_COMPUTED_INO_LIMIT ? de->d_ino * 2 + r : LO_UNKNOWN_INO;
    st.st_mode = de->d_type == DT_UNKNOWN ? 0 : DTTOIF(de->d_type);
    if (filler(buf, de->d_name, &st, de->d_off)) break; // the reply is full
  }
  closedir(d);
  if (err != 0) return -err;
  lo_count(f, LO_C_READDIR);
  return 0;
}

// The answer to a change made here: -errno, or 0 (counted).
static int lo_done(lo_fast *f, int rc, int counter) {
  if (rc < 0) return -errno;
  lo_count(f, counter);
  return 0;
}

static int lo_make_dir(const char *path, mode_t mode) {
  lo_fast *f = lo_get();
  if (f == NULL || !lo_in_upper(f, path, 0)) LO_PASS_TO(mkdir, path, mode);
  return lo_done(f, mkdirat(f->fd[LO_UPPER], lo_rel(path), mode & 07777), LO_C_MKDIR);
}

static int lo_unlink(const char *path) {
  lo_fast *f = lo_get();
  if (f == NULL || !lo_in_upper(f, path, 0)) LO_PASS_TO(unlink, path);
  return lo_done(f, unlinkat(f->fd[LO_UPPER], lo_rel(path), 0), LO_C_UNLINK);
}

static int lo_rmdir(const char *path) {
  lo_fast *f = lo_get();
  if (f == NULL || !lo_in_upper(f, path, 0)) LO_PASS_TO(rmdir, path);
  return lo_done(f, unlinkat(f->fd[LO_UPPER], lo_rel(path), AT_REMOVEDIR), LO_C_RMDIR);
}

static int lo_make_symlink(const char *target, const char *path) {
  lo_fast *f = lo_get();
  if (f == NULL || !lo_in_upper(f, path, 0)) LO_PASS_TO(symlink, target, path);
  return lo_done(f, symlinkat(target, f->fd[LO_UPPER], lo_rel(path)), LO_C_SYMLINK);
}

static int lo_hiding_for_tmp_link(const char *dst);

static int lo_rename(const char *src, const char *dst) {
  lo_fast *f = lo_get();
  if (f != NULL && lo_in_upper(f, src, 0) && lo_in_upper(f, dst, 0))
    return lo_done(f, renameat(f->fd[LO_UPPER], lo_rel(src), f->fd[LO_UPPER], lo_rel(dst)), LO_C_RENAME);
  if (f) lo_count(f, LO_C_PASSED);
  int rc = lo_js.rename(src, dst);
  // Before libfuse renames over a target that is open, it renames the target to a .fuse_hidden
  // name (hide_node), and the caller gets that rename's error. For a lower target that is
  // EROFS, where JS answers the rename itself with EMLINK when it comes from Nix's optimiser
  // (a .tmp-link-* at the root: overlay.ts rename), on which Nix skips the file: so a lower
  // file in use by any process (a running program) made `nix-store --optimise` fail with
  // "cannot rename ... Read-only file system". The hide step gets the rename's own answer.
  if (rc == -EROFS && lo_hiding_for_tmp_link(dst)) rc = -EMLINK;
  return rc;
}

static int lo_link(const char *src, const char *dst) {
  lo_fast *f = lo_get();
  if (f == NULL || !lo_in_upper(f, src, 0) || !lo_in_upper(f, dst, 0)) LO_PASS_TO(link, src, dst);
  return lo_done(f, linkat(f->fd[LO_UPPER], lo_rel(src), f->fd[LO_UPPER], lo_rel(dst), 0), LO_C_LINK);
}

static int lo_chmod(const char *path, mode_t mode) {
  lo_fast *f = lo_get();
  if (f == NULL || !lo_in_upper(f, path, 1)) LO_PASS_TO(chmod, path, mode);
  return lo_done(f, fchmodat(f->fd[LO_UPPER], lo_rel(path), mode & 07777, 0), LO_C_CHMOD);
}

static int lo_chown(const char *path, uid_t uid, gid_t gid) {
  lo_fast *f = lo_get();
  if (f == NULL || !lo_in_upper(f, path, 1)) LO_PASS_TO(chown, path, uid, gid);
  return lo_done(f, fchownat(f->fd[LO_UPPER], lo_rel(path), uid, gid, AT_SYMLINK_NOFOLLOW), LO_C_CHOWN);
}

static int lo_truncate(const char *path, off_t size) {
  lo_fast *f = lo_get();
  char real[PATH_MAX];
  if (f == NULL || !lo_in_upper(f, path, 1) || lo_real(f, LO_UPPER, path, real) < 0) LO_PASS_TO(truncate, path, size);
  return lo_done(f, truncate(real, size), LO_C_TRUNCATE);
}

// Full nanosecond precision, UTIME_NOW and UTIME_OMIT as they come.
static int lo_utimens(const char *path, const struct timespec tv[2]) {
  lo_fast *f = lo_get();
  if (f == NULL || !lo_in_upper(f, path, 1)) LO_PASS_TO(utimens, path, tv);
  return lo_done(f, utimensat(f->fd[LO_UPPER], lo_rel(path), tv, AT_SYMLINK_NOFOLLOW), LO_C_UTIMENS);
}

// A new entry belongs to whoever made it, as on any filesystem and under kernel OverlayFS: the
// daemon makes it (in C or in JS), then gives it to the caller. Nix depends on it: with build
// users, an output that root owns is "suspicious ownership" and the build is rejected. In a
// setgid directory the group stays the directory's (the kernel gave it so); a chown clears a
// regular file's setuid and setgid bits, so they are put back. Best effort: a daemon that may
// not chown (not root) leaves the entry its own, as it has to.
static int lo_give(const char *path, mode_t mode, int rc) {
  struct fuse_context *ctx = fuse_get_context();
  lo_fast *f = lo_state();
  if (rc != 0 || ctx == NULL || f == NULL || !__atomic_load_n(&f->configured, __ATOMIC_ACQUIRE)) return rc;
  uid_t me = geteuid();
  if (me != 0 || (ctx->uid == me && ctx->gid == getegid())) return rc;
  const char *rel = lo_rel(path);
  const char *slash = strrchr(rel, '/');
  struct stat dir;
  int dir_rc;
  if (slash == NULL) {
    dir_rc = fstat(f->fd[LO_UPPER], &dir);
  } else {
    char parent[PATH_MAX];
    size_t n = (size_t) (slash - rel);
    if (n >= sizeof(parent)) return rc;
    memcpy(parent, rel, n);
    parent[n] = '\0';
    dir_rc = fstatat(f->fd[LO_UPPER], parent, &dir, AT_SYMLINK_NOFOLLOW);
  }
  gid_t gid = dir_rc == 0 && (dir.st_mode & S_ISGID) ? (gid_t) -1 : ctx->gid;
  if (fchownat(f->fd[LO_UPPER], rel, ctx->uid, gid, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(mode) && (mode & (S_ISUID | S_ISGID)))
    fchmodat(f->fd[LO_UPPER], rel, mode & 07777, 0);
  return rc;
}

static int lo_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
  return lo_give(path, mode | S_IFREG, lo_make_file(path, mode, fi));
}

static int lo_mkdir(const char *path, mode_t mode) {
  return lo_give(path, (mode & 07777) | S_IFDIR, lo_make_dir(path, mode));
}

static int lo_symlink(const char *target, const char *path) {
  return lo_give(path, S_IFLNK | 0777, lo_make_symlink(target, path));
}

// Puts the fast path in front of each operation JS implements; the JS handler stays the
// fallback. Operations JS does not implement stay unimplemented.
static void lo_wrap_ops(struct fuse_operations *ops) {
  lo_js = *ops;
#define LO_WRAP(name) if (ops->name) ops->name = lo_##name
  LO_WRAP(getattr); LO_WRAP(fgetattr); LO_WRAP(readlink); LO_WRAP(open); LO_WRAP(create);
  LO_WRAP(read); LO_WRAP(write); LO_WRAP(release); LO_WRAP(fsync); LO_WRAP(ftruncate);
  LO_WRAP(readdir); LO_WRAP(mkdir); LO_WRAP(unlink); LO_WRAP(rmdir); LO_WRAP(symlink);
  LO_WRAP(rename); LO_WRAP(link); LO_WRAP(chmod); LO_WRAP(chown); LO_WRAP(truncate);
  LO_WRAP(utimens);
#undef LO_WRAP
}

// ---- the channel: between libfuse and /dev/fuse -------------------------------------------
//
// libfuse 2.9 negotiates protocol 7.19 and builds every reply from `struct fuse_file_info`, so
// four kernel features are out of its reach: directory listings and symlink targets the kernel
// keeps, READDIRPLUS and FUSE passthrough. So the session reads and writes /dev/fuse through
// this channel instead of libfuse's kernel channel: the same read(2)/writev(2) and error
// handling (fuse_kern_chan.c), plus the following.
//
// Listings. The first OPENDIR is answered ENOSYS here, which tells the kernel (Linux 5.1+, when
// INIT offers FUSE_NO_OPENDIR_SUPPORT) that opening a directory needs no request; it then opens
// every directory with FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR and answers getdents from a listing
// it keeps, with no OPENDIR, READDIR, RELEASEDIR or atime GETATTR (fs/fuse/file.c
// fuse_file_open, fs/fuse/readdir.c). The kernel drops a kept listing when a change through the
// mount touches the directory (fuse_dir_changed); what changes beside the mount is pushed to it
// (lo_invalidate): the root when the lower store changes (the daemon watches it) and every
// listed directory on `refresh`. Only when the fast path is on at the first OPENDIR.
//
// libfuse's high-level readdir needs the handle its opendir made, so for a READDIR without one
// (fh 0) the channel first has libfuse serve an OPENDIR of its own (fuse_session_process on
// this thread, a unique with LO_OWN, the reply kept here), then hands libfuse the READDIR with
// that handle. The handle stays (lo_dirs) while the listing goes on; at its end (or when a
// newer listing of the directory replaces it) a RELEASEDIR of the channel's own gives it back,
// served by the next thread that reads a request. A continuation may thus reach a handle other
// than the one that served the listing's start, so no offset may depend on the handle: the
// fast path's readdir gives the layer's own offsets (lo_readdir), and JS's listings are keyed
// by name (lo_js_readdir); libfuse keeps no listing in a handle. A listing that crosses a
// switch of the fast path (tracing, refresh) is continued by the other side from an offset it
// did not give, and can skip or repeat names (not fixed). FSYNCDIR and
// directory ioctls without a handle are answered ENOSYS here.
//
// READDIRPLUS: see lo_readdirplus. Passthrough: see lo_passthrough_id.
//
// The reply to a request is sent by the thread that read it (libfuse's high-level API answers
// synchronously), so the request being served travels in a thread-local.

#define LO_FUSE_OPEN 14
#define LO_FUSE_RELEASE 18
#define LO_FUSE_RENAME 12
#define LO_FUSE_INIT 26
#define LO_FUSE_OPENDIR 27
#define LO_FUSE_READDIR 28
#define LO_FUSE_RELEASEDIR 29
#define LO_FUSE_FSYNCDIR 30
#define LO_FUSE_LOOKUP 1
#define LO_FUSE_FORGET 2
#define LO_FUSE_BATCH_FORGET 42
#define LO_FUSE_IOCTL 39
#define LO_FUSE_READDIRPLUS 44
#define LO_FUSE_DO_READDIRPLUS (1u << 13)
#define LO_FUSE_PARALLEL_DIROPS (1u << 18)
#define LO_FUSE_CACHE_SYMLINKS (1u << 23)
#define LO_FUSE_IOCTL_DIR (1u << 4)
#define LO_FUSE_ROOT_ID 1
#define LO_FOPEN_KEEP_CACHE (1u << 1)
#define LO_FOPEN_PASSTHROUGH (1u << 7)
#define LO_FUSE_NO_OPENDIR_SUPPORT (1u << 24)
#define LO_FUSE_INIT_EXT (1u << 30)
#define LO_FUSE_PASSTHROUGH2 (1u << 5) // FUSE_PASSTHROUGH (bit 37) in flags2
#define LO_FUSE_DEV_IOC_BACKING_OPEN _IOW(229, 1, lo_backing_map)
#define LO_FUSE_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)
// Highest descriptor a passthrough handle may have (lo_chan.by_fd is indexed by it).
#define LO_MAX_PASSTHROUGH_FD (1 << 20)
// Requests the channel makes itself carry this bit in their unique (the kernel's count up by 2
// from 0 and never get near it); their replies stay here.
#define LO_OWN (1ULL << 62)
// Directory handles kept for listings in progress, and directories remembered for `refresh`.
#define LO_DIRS 64
// The largest READDIRPLUS answered (the kernel asks for a page, or up to max_pages).
#define LO_PLUS_MAX (128 * 1024)
#define LO_LISTED_MIN (1u << 12)
#define LO_LISTED_MAX (1u << 22)

typedef struct {
  uint32_t len;
  uint32_t opcode;
  uint64_t unique;
  uint64_t nodeid;
  uint32_t uid, gid, pid, padding;
} lo_in_header;

typedef struct {
  uint32_t len;
  int32_t error;
  uint64_t unique;
} lo_out_header;

typedef struct {
  uint64_t fh;
  uint32_t open_flags;
  int32_t backing_id; // 7.40; libfuse 2.9 sends 0 (padding)
} lo_open_out;

typedef struct {
  uint32_t flags;
  uint32_t open_flags;
} lo_open_in;

typedef struct {
  uint64_t fh;
  uint32_t flags, release_flags;
  uint64_t lock_owner;
} lo_release_in;

typedef struct {
  uint64_t fh;
  uint64_t offset;
  uint32_t size, read_flags;
  uint64_t lock_owner;
  uint32_t flags, padding;
} lo_read_in;

typedef struct {
  uint32_t count, dummy;
} lo_batch_forget_in; // then `count` of lo_forget_one

typedef struct {
  uint64_t nodeid, nlookup;
} lo_forget_one;

typedef struct {
  uint64_t ino;
  uint64_t off;
  uint32_t namelen;
  uint32_t type;
  char name[];
} lo_dirent;
#define LO_DIRENT_ALIGN(x) (((x) + 7) & ~(size_t) 7)

// fuse_entry_out: nodeid, generation, entry_valid, attr_valid, their nsecs, then fuse_attr
// (ino at its start, mode after the three times and their nsecs).
#define LO_ENTRY_OUT 128
#define LO_ENTRY_INO 40
#define LO_ENTRY_MODE 100

typedef struct {
  uint64_t fh;
  uint32_t flags, cmd;
  uint64_t arg;
  uint32_t in_size, out_size;
} lo_ioctl_in;

typedef struct {
  uint32_t major, minor, max_readahead, flags;
  uint32_t flags2; // only with FUSE_INIT_EXT in flags
} lo_init_in;

// fuse_init_out as of 7.43; libfuse 2.9 fills the first 24 bytes (7.19).
typedef struct {
  uint32_t major, minor, max_readahead, flags;
  uint16_t max_background, congestion_threshold;
  uint32_t max_write, time_gran;
  uint16_t max_pages, map_alignment;
  uint32_t flags2, max_stack_depth;
  uint16_t request_timeout;
  uint16_t unused[11];
} lo_init_out;
#define LO_INIT_OUT_LIBFUSE 24

typedef struct {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
} lo_backing_map;

// One lower file open with passthrough (id >= 0) or, after the kernel refused a backing file,
// in the page cache (id < 0): every open of a file while another is open gets the same mode
// (the kernel fails an open whose mode differs from the inode's with EIO).
typedef struct lo_backing {
  struct lo_backing *next;
  dev_t dev;
  ino_t ino;
  int32_t id;
  uint32_t opens;
} lo_backing;

// A directory handle libfuse made for the channel's own OPENDIR, kept while a listing goes on.
typedef struct {
  uint64_t nodeid; // 0: free
  uint64_t fh;
  int busy;        // a READDIR is using it
  uint64_t used;   // when it last served (c->dir_clock), to give back the oldest when all are taken
} lo_dir;

// A handle to give back (a queue: whichever thread reads next serves it).
typedef struct lo_dir_release {
  struct lo_dir_release *next;
  uint64_t fh;
} lo_dir_release;

typedef struct lo_chan {
  fuse_thread_t *ft;
  // The session's channel, for notifications from the JS thread (lo_invalidate); NULL once
  // libfuse's loop has ended (lo_chan_close): fuse_unmount then closes the device, whose
  // descriptor number the process may reuse at once, and fuse_destroy frees the channel.
  // Guarded by notify_lock, which lo_invalidate holds while it notifies (lock order:
  // notify_lock before lock).
  struct fuse_chan *ch;
  pthread_mutex_t notify_lock;
  // What the kernel offered in INIT, and what this connection does.
  int kernel_passthrough, kernel_no_opendir, kernel_readdirplus, kernel_cache_symlinks, kernel_parallel_dirops;
  int passthrough, no_opendir, readdirplus;
  uint64_t own_unique;
  pthread_mutex_t lock;
  lo_backing *backings;  // a list: few files are open at once
  lo_backing **by_fd;    // the entry a passthrough handle's descriptor holds
  size_t by_fd_len;
  uint32_t held;         // by_fd entries set: while 0, a RELEASE need not take the lock
  lo_dir dirs[LO_DIRS];
  uint64_t dir_clock;
  lo_dir_release *releases;
  uint64_t *listed;      // open addressing on nodeid (0 free): directories listed, for refresh
  size_t listed_cap, listed_count;

  // The reader (see there). The lock guards the role's hand-over and the watchdog's sleep; the
  // holder updates served and busy without it.
  pthread_mutex_t reader_lock;
  pthread_cond_t reader_turn;  // the role is free: a waiting worker may take it
  pthread_cond_t watch_wake;   // the watchdog may stop sleeping (CLOCK_MONOTONIC)
  uint64_t reader_gen;         // bumped whenever the role changes hands
  int reader_taken;
  int reader_waiting;          // workers waiting for the role
  uint64_t reader_served;      // requests the role's holders have read
  int reader_busy;             // the holder is serving a request, not reading
  int watch_started, watch_idle;
  int64_t poll_gap_ns;         // how long the holder's last read waited ("polling")
  int all_read;                // every worker reads, as in libfuse's loop: the session is gone, or
                               // the watchdog could not start
} lo_chan;

typedef struct {
  uint64_t unique;
  uint64_t nodeid;
  uint32_t opcode;
  uint32_t open_flags; // OPEN: the flags of open(2)
  int rename_tmp_link;  // RENAME: the old name is a .tmp-link-* in the root (Nix's optimiser)

  // A READDIR without a handle: 1 while the channel's own OPENDIR is with libfuse (its reply
  // fills dir_fh or dir_error), 2 while the READDIR itself is with libfuse.
  int dir_step;
  uint64_t dir_unique;
  uint64_t dir_fh;
  int32_t dir_error;
  int dir_kept;         // dir_fh is an lo_dirs entry (busy)
  int dir_first;        // the READDIR is at offset 0 (a new listing)
  // Replies to the channel's own READDIR and LOOKUP (READDIRPLUS is made of them).
  char *plain;          // the dirents (LO_PLUS_MAX bytes)
  size_t plain_len;
  int32_t own_error;
  char entry[LO_ENTRY_OUT];
} lo_request;

static __thread lo_request lo_current;

// Whether this thread, serving a RENAME from a root .tmp-link-*, is renaming the target to
// `dst` to hide it (lo_rename): libfuse's hidden names are exactly the .fuse_hidden ones.
static int lo_hiding_for_tmp_link(const char *dst) {
  const char *base = dst ? strrchr(dst, '/') : NULL;
  return lo_current.opcode == LO_FUSE_RENAME && lo_current.rename_tmp_link && base != NULL && lo_is_hidden_name(base + 1);
}

// lo_current.plain is a thread's own buffer, kept across requests. __thread storage is not
// freed when a thread ends, and libfuse ends idle workers beyond its tenth: a key's destructor
// frees it then (also when the thread is cancelled at the end of the loop).
static pthread_key_t lo_plain_key;
static pthread_once_t lo_plain_once = PTHREAD_ONCE_INIT;
static void lo_plain_key_make(void) {
  pthread_key_create(&lo_plain_key, free);
}

static lo_fast *lo_chan_fast(lo_chan *c) {
  return __atomic_load_n(&c->ft->fast, __ATOMIC_ACQUIRE);
}

// ---- signals ---------------------------------------------------------------------------------
//
// The threads of libfuse's loop, and the watchdog, take no asynchronous signal: the kernel
// delivers those to Node's own threads. libfuse 2 ends its loop by cancelling the workers
// (pthread_cancel) while they wait in receive, where cancellation is on. A signal delivered to
// such a worker runs its handler there, and for Node that is libuv's: it takes libuv's
// process-wide signal lock (a byte read from a pipe), writes to the loop's pipe and writes the
// byte back, and both writes are cancellation points. A worker cancelled between the read and
// the write-back exits with the lock, and the next uv_signal_start/stop on the main thread
// waits for it forever. After an unmount that is certain: the exit of `fusermount`, spawned to
// unmount, sends the SIGCHLD, and its process handle's close stops the SIGCHLD watcher; the
// daemon never exits. Faults and abort stay deliverable: they are synchronous, and blocking
// them would not stop them.
//
// The threads are named too (`top -H`, gdb, unmount's diagnosis): "lo-fuse" for libfuse's loop
// and its workers (they inherit the name), "lo-watchdog" for the watchdog.
typedef struct {
  void *(*fn)(void *);
  void *arg;
  const char *name;
} lo_thread_start;

static void *lo_thread_main(void *p) {
  lo_thread_start start = *(lo_thread_start *) p;
  free(p);
  prctl(PR_SET_NAME, start.name);
  return start.fn(start.arg);
}

static int lo_thread_create(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg, const char *name) {
  static const int synchronous[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT };
  lo_thread_start *start = malloc(sizeof(lo_thread_start));
  if (start == NULL) return ENOMEM;
  *start = (lo_thread_start) { .fn = fn, .arg = arg, .name = name };
  sigset_t block, old;
  sigfillset(&block);
  for (size_t i = 0; i < sizeof(synchronous) / sizeof(synchronous[0]); i++) sigdelset(&block, synchronous[i]);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  int rc = pthread_create(t, attr, lo_thread_main, start);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) free(start);
  return rc;
}

// ---- the exit deadline -----------------------------------------------------------------------
//
// An ordinary exit waits for threads that may never return: exit() runs libuv's destructor,
// which joins its threadpool, and libfuse's loop joins its workers. A thread that waits on a
// layer which stopped answering (a stat of a hung NFS mount, a read of a stopped FUSE server)
// holds up either until the layer answers, long after the mount is gone. So once the daemon
// has unmounted and closed its DBs it sets a deadline: a thread ("lo-exit") ends the process
// with _exit() if the ordinary exit has not done so by then. Nothing is lost: the DBs are closed
// and the log written before, and the waiting calls are killable.
typedef struct {
  int32_t ms, code;
} lo_exit_plan;

static void *lo_exit_after(void *p) {
  lo_exit_plan plan = *(lo_exit_plan *) p;
  free(p);
  struct timespec left = { plan.ms / 1000, (long) (plan.ms % 1000) * 1000000L };
  while (nanosleep(&left, &left) != 0 && errno == EINTR) {}
  _exit(plan.code);
}

// ---- the reader ------------------------------------------------------------------------------
//
// libfuse's loop lets every idle worker wait in read(2) on the device, so the kernel wakes a
// sleeping worker for each request that arrives while another is busy: a closed file's RELEASE
// and the next OPEN, sent back to back, cost two thread wakeups, and an open/close loop cost
// 14-18 µs of daemon CPU per file against 10-12 µs with one thread (bench/README.md). So one
// worker at a time reads the device (it holds "the reader role"); the others wait here for
// their turn. The holder serves what it read and reads again, and requests that come back to
// back never wake anyone. It gives the role to a waiting worker first when what it is about to
// do may take long:
//
// - a request for JS (fuse-native's handler waits for the JS thread);
// - an fsync;
// - any call on a layer that is not on a local filesystem (lo_on; slow[] is set from statfs).
//
// For what these rules cannot foresee (a disk read of a cold inode, a write the page cache
// throttles, a kernel call that waits for a request of ours), a watchdog thread takes the role
// from a holder still serving the same request after a tick (1 to 2 ms) and hands it on. It ticks
// only while requests come: after LO_WATCH_QUIET quiet ticks it sleeps until the next request.
// Two workers reading at once (a race between the watchdog and a holder done just in time) is
// harmless: that is libfuse's own way.
//
// libfuse still starts a worker when none is left in receive, and cancels workers waiting in
// receive at unmount, waiting for the role included (lo_reader_cancelled).

#define LO_WATCH_TICK_NS 1000000L
#define LO_WATCH_QUIET 200

// The role's generation this thread holds (0: none), and the channel it reads.
static __thread uint64_t lo_reader_held;
static __thread lo_chan *lo_reader_chan;

// Frees the role; the caller holds reader_lock.
static void lo_reader_free_locked(lo_chan *c) {
  c->reader_taken = 0;
  __atomic_store_n(&c->reader_gen, c->reader_gen + 1, __ATOMIC_RELEASE);
  __atomic_store_n(&c->reader_busy, 0, __ATOMIC_RELAXED);
  if (c->reader_waiting > 0) pthread_cond_signal(&c->reader_turn);
}

static void lo_reader_yield(void) {
  lo_chan *c = lo_reader_chan;
  uint64_t held = lo_reader_held;
  if (c == NULL || held == 0) return;
  lo_reader_held = 0;
  pthread_mutex_lock(&c->reader_lock);
  int mine = held == c->reader_gen;
  if (mine) lo_reader_free_locked(c);
  pthread_mutex_unlock(&c->reader_lock);
  lo_fast *f = lo_chan_fast(c);
  if (mine && f != NULL) lo_count(f, LO_C_HANDOFF);
}

static void lo_reader_cancelled(void *arg) {
  lo_chan *c = arg;
  c->reader_waiting--;
  pthread_mutex_unlock(&c->reader_lock);
}

// Returns holding the role (at once if this thread holds it), about to read the device.
static void lo_reader_take(lo_chan *c) {
  lo_reader_chan = c;
  if (lo_reader_held == 0 || lo_reader_held != __atomic_load_n(&c->reader_gen, __ATOMIC_ACQUIRE)) {
    pthread_mutex_lock(&c->reader_lock);
    c->reader_waiting++;
    pthread_cleanup_push(lo_reader_cancelled, c);
    while (c->reader_taken && !c->all_read) pthread_cond_wait(&c->reader_turn, &c->reader_lock);
    pthread_cleanup_pop(0);
    c->reader_waiting--;
    c->reader_taken = 1;
    __atomic_store_n(&c->reader_gen, c->reader_gen + 1, __ATOMIC_RELEASE);
    lo_reader_held = c->reader_gen;
    pthread_mutex_unlock(&c->reader_lock);
  }
  __atomic_store_n(&c->reader_busy, 0, __ATOMIC_RELAXED);
}

static void *lo_watch(void *arg) {
  lo_chan *c = arg;
  uint64_t seen = 0;
  int quiet = 0;
  struct timespec next;
  clock_gettime(CLOCK_MONOTONIC, &next);
  pthread_mutex_lock(&c->reader_lock);
  while (!c->all_read) {
    if (c->watch_idle) {
      pthread_cond_wait(&c->watch_wake, &c->reader_lock);
      clock_gettime(CLOCK_MONOTONIC, &next);
      seen = __atomic_load_n(&c->reader_served, __ATOMIC_RELAXED);
      quiet = 0;
      continue;
    }
    next.tv_nsec += LO_WATCH_TICK_NS;
    if (next.tv_nsec >= 1000000000L) {
      next.tv_sec++;
      next.tv_nsec -= 1000000000L;
    }
    if (pthread_cond_timedwait(&c->watch_wake, &c->reader_lock, &next) != ETIMEDOUT) continue;
    uint64_t served = __atomic_load_n(&c->reader_served, __ATOMIC_RELAXED);
    if (served != seen) {
      seen = served;
      quiet = 0;
    } else if (c->reader_taken && __atomic_load_n(&c->reader_busy, __ATOMIC_RELAXED)) {
      lo_reader_free_locked(c); // the holder is stuck on one request
      lo_fast *f = lo_chan_fast(c);
      if (f != NULL) lo_count(f, LO_C_STALL);
    } else if (++quiet >= LO_WATCH_QUIET) {
      c->watch_idle = 1;
    }
    // A late tick (the machine was busy) does not make up for the ticks it missed.
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec > next.tv_sec || (now.tv_sec == next.tv_sec && now.tv_nsec > next.tv_nsec)) next = now;
  }
  pthread_mutex_unlock(&c->reader_lock);
  return NULL;
}

// The holder read a request: the watchdog's clock moves, and the watchdog wakes if it slept.
static inline void lo_reader_serving(lo_chan *c) {
  __atomic_store_n(&c->reader_served, c->reader_served + 1, __ATOMIC_RELAXED);
  __atomic_store_n(&c->reader_busy, 1, __ATOMIC_RELAXED);
  if (!__atomic_load_n(&c->watch_idle, __ATOMIC_RELAXED)) return;
  pthread_mutex_lock(&c->reader_lock);
  if (c->watch_idle && !c->all_read) {
    c->watch_idle = 0;
    if (c->watch_started) {
      pthread_cond_signal(&c->watch_wake);
    } else {
      pthread_t t;
      pthread_attr_t attr;
      pthread_attr_init(&attr);
      pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
      c->watch_started = lo_thread_create(&t, &attr, lo_watch, c, "lo-watchdog") == 0;
      pthread_attr_destroy(&attr);
      if (!c->watch_started) c->all_read = 1;
    }
  }
  pthread_mutex_unlock(&c->reader_lock);
}

// The reader's state, at the channel's making: free role, watchdog not started (it starts
// with the first request). 0, or -1.
static int lo_reader_init(lo_chan *c) {
  pthread_condattr_t attr;
  if (pthread_mutex_init(&c->reader_lock, NULL) != 0 || pthread_cond_init(&c->reader_turn, NULL) != 0) return -1;
  if (pthread_condattr_init(&attr) != 0) return -1;
  int rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 && pthread_cond_init(&c->watch_wake, &attr) == 0 ? 0 : -1;
  pthread_condattr_destroy(&attr);
  c->watch_idle = 1;
  return rc;
}

// The session is gone: workers still waiting for the role, and the watchdog, stop waiting.
static void lo_reader_close(lo_chan *c) {
  pthread_mutex_lock(&c->reader_lock);
  c->all_read = 1;
  pthread_cond_broadcast(&c->reader_turn);
  pthread_cond_broadcast(&c->watch_wake);
  pthread_mutex_unlock(&c->reader_lock);
}

// ---- passthrough -----------------------------------------------------------------------------

// The backing entry for lower file `st` (open as `fd`), with one more open counted, or NULL.
static lo_backing *lo_backing_get(lo_chan *c, int devfd, int fd, const struct stat *st) {
  if (fd < 0 || fd >= LO_MAX_PASSTHROUGH_FD) return NULL;
  pthread_mutex_lock(&c->lock);
  if ((size_t) fd >= c->by_fd_len) {
    size_t len = c->by_fd_len == 0 ? 1024 : c->by_fd_len;
    while (len <= (size_t) fd) len *= 2;
    lo_backing **grown = realloc(c->by_fd, len * sizeof(lo_backing *));
    if (grown == NULL) {
      pthread_mutex_unlock(&c->lock);
      return NULL;
    }
    memset(grown + c->by_fd_len, 0, (len - c->by_fd_len) * sizeof(lo_backing *));
    c->by_fd = grown;
    c->by_fd_len = len;
  }
  lo_backing *b = c->backings;
  while (b != NULL && (b->dev != st->st_dev || b->ino != st->st_ino)) b = b->next;
  if (b == NULL) {
    b = calloc(1, sizeof(lo_backing));
    if (b == NULL) {
      pthread_mutex_unlock(&c->lock);
      return NULL;
    }
    b->dev = st->st_dev;
    b->ino = st->st_ino;
    lo_backing_map map = { .fd = fd, .flags = 0, .padding = 0 };
    b->id = ioctl(devfd, LO_FUSE_DEV_IOC_BACKING_OPEN, &map); // -1 if refused: page cache
    b->next = c->backings;
    c->backings = b;
  }
  b->opens++;
  c->by_fd[fd] = b;
  __atomic_store_n(&c->held, c->held + 1, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&c->lock);
  return b;
}

// The handle with descriptor `fd` is released: one open less, and the backing file goes with
// the last one.
static void lo_backing_put(lo_chan *c, int devfd, int fd) {
  // Most files are never held (small, upper, or passthrough off): no lock for their RELEASE.
  // A held handle's OPEN reply was written before the kernel could send its RELEASE.
  if (fd < 0 || __atomic_load_n(&c->held, __ATOMIC_RELAXED) == 0) return;
  pthread_mutex_lock(&c->lock);
  lo_backing *b = (size_t) fd < c->by_fd_len ? c->by_fd[fd] : NULL;
  if (b != NULL) {
    c->by_fd[fd] = NULL;
    __atomic_store_n(&c->held, c->held - 1, __ATOMIC_RELAXED);
    if (--b->opens == 0) {
      lo_backing **p = &c->backings;
      while (*p != b) p = &(*p)->next;
      *p = b->next;
      if (b->id >= 0) {
        uint32_t id = (uint32_t) b->id;
        ioctl(devfd, LO_FUSE_DEV_IOC_BACKING_CLOSE, &id);
      }
      free(b);
    }
  }
  pthread_mutex_unlock(&c->lock);
}

// Whether handle `fh` (file `st`) is a lower file. Handles opened here say so; a JS handle is
// a plain descriptor: its device tells, unless both layers share one, then its path does.
static int lo_fd_is_lower(lo_fast *f, uint64_t fh, const struct stat *st) {
  if (fh & LO_FH_FAST) return (fh & LO_FH_LOWER) != 0;
  if (st->st_dev != f->dev[LO_LOWER]) return 0;
  if (f->dev[LO_LOWER] != f->dev[LO_UPPER]) return 1;
  char link[64], real[PATH_MAX];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", LO_FH_FD(fh));
  ssize_t n = readlink(link, real, sizeof(real) - 1);
  if (n <= 0) return 0;
  real[n] = '\0';
  size_t len = f->dir_len[LO_LOWER];
  return (size_t) n > len && strncmp(real, f->dir[LO_LOWER], len) == 0 && real[len] == '/';
}

// For a successful OPEN reply: the backing id to answer with (>= 0), or -1 (answer as libfuse
// does). A lower regular file at least passthrough_min bytes long is read by the kernel itself
// (FUSE passthrough, 7.40): no READ reaches the daemon, and its data is cached once, in the
// lower file's page cache. Lower files never change and are opened only for reading, so every
// open of one qualifies alike, whoever answered it (native code or JS) and whether the fast
// path is on; all open handles of a file share one backing id, and the backing file goes with
// the RELEASE of the last (the kernel refuses mixed modes and a second backing file for an
// inode, with EIO).
// *held: the handle's descriptor holds a backing entry (to give back if the reply fails), even
// when the answer is -1 (the kernel refused the backing file: page cache mode for the file).
static int32_t lo_passthrough_id(lo_chan *c, int devfd, uint64_t fh, int *held) {
  *held = 0;
  lo_fast *f = lo_chan_fast(c);
  if (!c->passthrough || f == NULL || f->passthrough_min < 0) return -1;
  if ((lo_current.open_flags & O_ACCMODE) != O_RDONLY) return -1;
  if ((fh & LO_FH_FAST) && !(fh & LO_FH_LOWER)) return -1; // an upper file, opened natively
  int fd = LO_FH_FD(fh);
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || !lo_fd_is_lower(f, fh, &st)) return -1;
  if (st.st_size < f->passthrough_min) return -1;
  lo_backing *b = lo_backing_get(c, devfd, fd, &st);
  if (b == NULL) return -1;
  *held = 1;
  if (b->id < 0) return -1;
  lo_count(f, LO_C_PASSTHROUGH);
  return b->id;
}

// ---- listings --------------------------------------------------------------------------------

// Where nodeid `n` would go in a table of `mask + 1` slots.
static inline size_t lo_listed_home(uint64_t n, size_t mask) {
  return (size_t) (n * 0x9E3779B97F4A7C15ull) & mask;
}

// Remembers that directory `nodeid` was listed (the kernel keeps the listing), for refresh.
static void lo_listed(lo_chan *c, uint64_t nodeid) {
  pthread_mutex_lock(&c->lock);
  if (c->listed_count + 1 > c->listed_cap / 4 * 3) {
    size_t cap = c->listed_cap == 0 ? LO_LISTED_MIN : c->listed_cap * 2;
    uint64_t *grown = cap <= LO_LISTED_MAX ? calloc(cap, sizeof(uint64_t)) : NULL;
    if (grown == NULL) {
      // Beyond this many directories a refresh cannot reach every kept listing (documented).
      pthread_mutex_unlock(&c->lock);
      return;
    }
    for (size_t i = 0; i < c->listed_cap; i++) {
      uint64_t n = c->listed[i];
      if (n == 0) continue;
      size_t j = lo_listed_home(n, cap - 1);
      while (grown[j] != 0) j = (j + 1) & (cap - 1);
      grown[j] = n;
    }
    free(c->listed);
    c->listed = grown;
    c->listed_cap = cap;
  }
  size_t mask = c->listed_cap - 1;
  size_t j = lo_listed_home(nodeid, mask);
  while (c->listed[j] != 0 && c->listed[j] != nodeid) j = (j + 1) & mask;
  if (c->listed[j] == 0) {
    c->listed[j] = nodeid;
    __atomic_store_n(&c->listed_count, c->listed_count + 1, __ATOMIC_RELAXED);
  }
  pthread_mutex_unlock(&c->lock);
}

// Lets directory `nodeid` go from the listed set: the kernel forgot its inode (FORGET), and
// with it any listing it kept. Without this the set would hold every directory ever listed
// (a daemon's lifetime of build outputs) until refresh. Backward-shift deletion: each entry
// after the hole that may move to it does, so no probe chain is cut. Holds c->lock.
static void lo_unlisted_locked(lo_chan *c, uint64_t nodeid) {
  if (c->listed_count == 0) return;
  size_t mask = c->listed_cap - 1;
  size_t hole = lo_listed_home(nodeid, mask);
  while (c->listed[hole] != nodeid) {
    if (c->listed[hole] == 0) return;
    hole = (hole + 1) & mask;
  }
  for (size_t j = (hole + 1) & mask; c->listed[j] != 0; j = (j + 1) & mask) {
    size_t home = lo_listed_home(c->listed[j], mask);
    // The entry at j stays unless its home is outside (hole, j], cyclically.
    int stays = hole < j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (stays) continue;
    c->listed[hole] = c->listed[j];
    hole = j;
  }
  c->listed[hole] = 0;
  __atomic_store_n(&c->listed_count, c->listed_count - 1, __ATOMIC_RELAXED);
}

// A FORGET or BATCH_FORGET read from the device (libfuse then drops its nodes as before).
static void lo_forgotten(lo_chan *c, uint32_t opcode, uint64_t nodeid, const char *arg, size_t arg_len) {
  if (__atomic_load_n(&c->listed_count, __ATOMIC_RELAXED) == 0) return;
  pthread_mutex_lock(&c->lock);
  if (opcode == LO_FUSE_FORGET) {
    lo_unlisted_locked(c, nodeid);
  } else if (arg_len >= sizeof(lo_batch_forget_in)) {
    size_t count = ((const lo_batch_forget_in *) arg)->count;
    size_t fits = (arg_len - sizeof(lo_batch_forget_in)) / sizeof(lo_forget_one);
    const lo_forget_one *one = (const lo_forget_one *) (arg + sizeof(lo_batch_forget_in));
    for (size_t i = 0; i < count && i < fits; i++) lo_unlisted_locked(c, one[i].nodeid);
  }
  pthread_mutex_unlock(&c->lock);
}

// Makes the kernel drop what it keeps of the root (all: and of every listed directory). Does
// nothing once the loop has ended (the mount is gone: nothing is kept).
static void lo_invalidate(lo_chan *c, int all) {
  pthread_mutex_lock(&c->notify_lock);
  if (c->ch != NULL) {
    fuse_lowlevel_notify_inval_inode(c->ch, LO_FUSE_ROOT_ID, 0, 0);
    if (all) {
      pthread_mutex_lock(&c->lock);
      uint64_t *listed = c->listed;
      size_t cap = c->listed_cap;
      c->listed = NULL;
      c->listed_cap = 0;
      __atomic_store_n(&c->listed_count, 0, __ATOMIC_RELAXED);
      pthread_mutex_unlock(&c->lock);
      // ENOENT for a directory the kernel has forgotten meanwhile: nothing to drop.
      for (size_t i = 0; i < cap; i++) {
        if (listed[i] != 0) fuse_lowlevel_notify_inval_inode(c->ch, listed[i], 0, 0);
      }
      free(listed);
    }
  }
  pthread_mutex_unlock(&c->notify_lock);
}

// No notification goes through the channel from now on; waits for one under way.
static void lo_chan_close(lo_chan *c) {
  pthread_mutex_lock(&c->notify_lock);
  c->ch = NULL;
  pthread_mutex_unlock(&c->notify_lock);
}

// A reply written by the channel itself (an answer libfuse never sees).
static void lo_reply_error(int devfd, uint64_t unique, int err) {
  lo_out_header out = { .len = sizeof(out), .error = -err, .unique = unique };
  if (write(devfd, &out, sizeof(out)) < 0 && errno != ENOENT) perror("fuse: writing device");
}

// Has libfuse serve a request of the channel's own on this thread (its reply stays in
// lo_chan_send). lo_current describes it meanwhile.
static void lo_own_request(lo_chan *c, struct fuse_chan *ch, uint32_t opcode, uint64_t nodeid, const void *arg, size_t arg_len) {
  char buf[sizeof(lo_in_header) + sizeof(lo_read_in) + LO_NAME_MAX + 1];
  if (arg_len > sizeof(buf) - sizeof(lo_in_header)) return;
  lo_in_header in = { .len = (uint32_t) (sizeof(in) + arg_len), .opcode = opcode, .nodeid = nodeid };
  in.unique = LO_OWN | (__atomic_add_fetch(&c->own_unique, 2, __ATOMIC_RELAXED) & (LO_OWN - 1));
  memcpy(buf, &in, sizeof(in));
  memcpy(buf + sizeof(in), arg, arg_len);
  lo_current.unique = in.unique;
  lo_current.nodeid = nodeid;
  lo_current.opcode = opcode;
  // libfuse's loop lets a worker be cancelled while it waits in receive (at unmount), but never
  // while it serves a request: this one is served inside receive.
  int cancel;
  pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
  fuse_session_process(fuse_chan_session(ch), buf, in.len, ch);
  pthread_setcancelstate(cancel, NULL);
}

// Serves the queued RELEASEDIRs of the channel's own.
static void lo_serve_releases(lo_chan *c, struct fuse_chan *ch) {
  for (;;) {
    pthread_mutex_lock(&c->lock);
    lo_dir_release *q = c->releases;
    if (q != NULL) c->releases = q->next;
    pthread_mutex_unlock(&c->lock);
    if (q == NULL) return;
    lo_release_in rel = { .fh = q->fh };
    // Named by the root, not by the directory: the kernel may have forgotten the directory
    // since (its last handle closed), and libfuse aborts on a node it does not know. Its
    // releasedir uses the node only for a path, which nothing here reads.
    lo_own_request(c, ch, LO_FUSE_RELEASEDIR, LO_FUSE_ROOT_ID, &rel, sizeof(rel));
    free(q);
  }
}

// The kept handle of directory `nodeid` for a READDIR at a later offset, marked busy; or 0.
static uint64_t lo_dir_take(lo_chan *c, uint64_t nodeid) {
  uint64_t fh = 0;
  pthread_mutex_lock(&c->lock);
  for (int i = 0; i < LO_DIRS; i++) {
    if (c->dirs[i].nodeid == nodeid && !c->dirs[i].busy) {
      c->dirs[i].busy = 1;
      fh = c->dirs[i].fh;
      break;
    }
  }
  pthread_mutex_unlock(&c->lock);
  return fh;
}

// Queues directory handle `fh` to be given back (c->lock held).
static void lo_give_back_locked(lo_chan *c, uint64_t fh) {
  lo_dir_release *q = malloc(sizeof(lo_dir_release));
  if (q == NULL) return; // libfuse keeps a directory handle it is never asked to free
  *q = (lo_dir_release) { .next = c->releases, .fh = fh };
  c->releases = q;
}

// After the reply to a READDIR served with handle `fh` of `nodeid`: keep the handle while the
// listing goes on (`more`), else give it back (c->releases).
static void lo_dir_done(lo_chan *c, uint64_t nodeid, uint64_t fh, int kept, int more) {
  uint64_t release = 0;
  pthread_mutex_lock(&c->lock);
  lo_dir *slot = NULL, *free_slot = NULL, *oldest = NULL;
  for (int i = 0; i < LO_DIRS; i++) {
    lo_dir *d = &c->dirs[i];
    if (kept ? d->fh == fh && d->nodeid == nodeid : d->nodeid == nodeid) slot = d;
    if (d->nodeid == 0 && free_slot == NULL) free_slot = d;
    if (d->nodeid != 0 && !d->busy && (oldest == NULL || d->used < oldest->used)) oldest = d;
  }
  uint64_t now = ++c->dir_clock;
  if (!kept && more && slot == NULL && free_slot == NULL && oldest != NULL) {
    // Every slot is taken, most likely by listings abandoned half way: the oldest goes.
    lo_give_back_locked(c, oldest->fh);
    oldest->nodeid = 0;
    free_slot = oldest;
  }
  if (kept && slot == NULL) {
    release = fh; // not expected: a busy slot is only freed by its user
  } else if (kept) {
    if (more) {
      slot->busy = 0;
      slot->used = now;
    } else {
      release = fh;
      slot->nodeid = 0;
    }
  } else if (!more) {
    release = fh;
  } else if (slot != NULL && !slot->busy) {
    release = slot->fh; // an older listing of the same directory, abandoned: the new one stays
    slot->fh = fh;
    slot->used = now;
  } else if (slot == NULL && free_slot != NULL) {
    *free_slot = (lo_dir) { .nodeid = nodeid, .fh = fh, .busy = 0, .used = now };
  } else {
    release = fh;
  }
  if (release != 0) lo_give_back_locked(c, release);
  pthread_mutex_unlock(&c->lock);
}

// After a READDIR or READDIRPLUS served with the channel's handle `fh`: a new listing that
// succeeded (`first`) is remembered and counted; the handle is kept or given back (lo_dir_done).
static void lo_listing_served(lo_chan *c, uint64_t nodeid, uint64_t fh, int kept, int first, int more) {
  if (first) {
    lo_listed(c, nodeid);
    lo_fast *f = lo_chan_fast(c);
    if (f != NULL) lo_count(f, LO_C_LISTING);
  }
  lo_dir_done(c, nodeid, fh, kept, more);
}

// A handle for directory `nodeid` to list from `off`: a kept one, or one from an OPENDIR of the
// channel's own; 0 (and an errno in *err) if libfuse refused it.
static uint64_t lo_dir_handle(lo_chan *c, struct fuse_chan *ch, uint64_t nodeid, uint64_t off, int *kept, int *err) {
  lo_request *r = &lo_current;
  uint64_t fh = off != 0 ? lo_dir_take(c, nodeid) : 0;
  *kept = fh != 0;
  *err = 0;
  if (fh != 0) return fh;
  r->dir_step = 1;
  r->dir_error = 0;
  r->dir_fh = 0;
  lo_open_in open_in = { .flags = O_RDONLY | O_DIRECTORY };
  lo_own_request(c, ch, LO_FUSE_OPENDIR, nodeid, &open_in, sizeof(open_in));
  r->dir_step = 0;
  if (r->dir_error != 0 || r->dir_fh == 0) {
    *err = r->dir_error != 0 ? -r->dir_error : EIO;
    return 0;
  }
  return r->dir_fh;
}

// READDIRPLUS, which libfuse 2.9 does not know: the listing from libfuse's readdir (an own
// READDIR), and for each entry that fits, its entry from libfuse's lookup (an own LOOKUP, so
// libfuse counts the lookup the kernel will FORGET). "." and ".." carry no entry (nodeid 0).
static void lo_readdirplus(lo_chan *c, struct fuse_chan *ch, int devfd, const lo_in_header *in, const lo_read_in *rd) {
  lo_request *r = &lo_current;
  uint64_t unique = in->unique, nodeid = in->nodeid, off = rd->offset;
  size_t size = rd->size < LO_PLUS_MAX ? rd->size : LO_PLUS_MAX;
  if (r->plain == NULL) {
    r->plain = malloc(LO_PLUS_MAX);
    if (r->plain != NULL) {
      pthread_once(&lo_plain_once, lo_plain_key_make);
      pthread_setspecific(lo_plain_key, r->plain);
    }
  }
  char *reply = malloc(sizeof(lo_out_header) + size);
  if (r->plain == NULL || reply == NULL) {
    free(reply);
    lo_reply_error(devfd, unique, ENOMEM);
    return;
  }
  int kept = 0, err = 0;
  uint64_t fh = rd->fh; // a handle from a real OPENDIR (before the first was refused)
  int own = fh == 0;
  if (own) fh = lo_dir_handle(c, ch, nodeid, off, &kept, &err);
  if (fh == 0) {
    free(reply);
    lo_reply_error(devfd, unique, err);
    return;
  }
  lo_read_in plain_in = { .fh = fh, .offset = off, .size = (uint32_t) size };
  r->plain_len = 0;
  r->own_error = 0;
  lo_own_request(c, ch, LO_FUSE_READDIR, nodeid, &plain_in, sizeof(plain_in));
  int32_t error = r->own_error;
  lo_fast *f = lo_chan_fast(c);
  size_t used = sizeof(lo_out_header), at = 0;
  while (error == 0 && at + sizeof(lo_dirent) <= r->plain_len) {
    const lo_dirent *d = (const lo_dirent *) (r->plain + at);
    size_t plain_rec = LO_DIRENT_ALIGN(sizeof(lo_dirent) + d->namelen);
    size_t plus_rec = LO_DIRENT_ALIGN(LO_ENTRY_OUT + sizeof(lo_dirent) + d->namelen);
    if (d->namelen == 0 || d->namelen > LO_NAME_MAX || at + plain_rec > r->plain_len) break;
    if (used + plus_rec > sizeof(lo_out_header) + size) break;
    char *e = reply + used;
    memset(e, 0, plus_rec);
    int dots = d->name[0] == '.' && (d->namelen == 1 || (d->namelen == 2 && d->name[1] == '.'));
    // Only lookups the fast path answers: at the root that means a name whose layer is
    // settled (a lookup through JS would copy a lazy closure for every listed object).
    int settled = nodeid != LO_FUSE_ROOT_ID;
    if (!settled && f != NULL && __atomic_load_n(&f->enabled, __ATOMIC_ACQUIRE)) {
      int kind = lo_kind(f, d->name, d->namelen);
      settled = kind == LO_UPPER || kind == LO_LOWER;
    }
    if (!dots && settled) {
      char name[LO_NAME_MAX + 1];
      memcpy(name, d->name, d->namelen);
      name[d->namelen] = '\0';
      memset(r->entry, 0, sizeof(r->entry));
      lo_own_request(c, ch, LO_FUSE_LOOKUP, nodeid, name, d->namelen + 1);
      memcpy(e, r->entry, LO_ENTRY_OUT); // zero (no entry) if the lookup failed
    }
    lo_dirent *plus = (lo_dirent *) (e + LO_ENTRY_OUT);
    memcpy(plus, d, sizeof(lo_dirent) + d->namelen);
    uint64_t looked_up;
    memcpy(&looked_up, e, sizeof(looked_up));
    if (looked_up != 0) {
      // libfuse's readdir knows no inode or type at the root (JS lists names only): the
      // kernel hands the dirent's to readdir(3), so they are the lookup's, as lstat gives them.
      uint32_t mode;
      memcpy(&plus->ino, e + LO_ENTRY_INO, sizeof(plus->ino));
      memcpy(&mode, e + LO_ENTRY_MODE, sizeof(mode));
      plus->type = (mode & S_IFMT) >> 12;
    }
    used += plus_rec;
    at += plain_rec;
  }
  lo_out_header *out = (lo_out_header *) reply;
  *out = (lo_out_header) { .len = (uint32_t) (error == 0 ? used : sizeof(lo_out_header)), .error = error, .unique = unique };
  r->unique = unique;
  r->nodeid = nodeid;
  r->opcode = LO_FUSE_READDIRPLUS;
  int wrote = write(devfd, reply, out->len) >= 0;
  if (!wrote && errno != ENOENT) perror("fuse: writing device");
  int more = wrote && error == 0 && used > sizeof(lo_out_header);
  free(reply);
  if (f != NULL && wrote) lo_count(f, LO_C_READDIRPLUS);
  if (own) lo_listing_served(c, nodeid, fh, kept, off == 0 && error == 0, more);
}

// ---- polling ---------------------------------------------------------------------------------
//
// A reader that sleeps in read(2) on the device costs each request a wakeup: the kernel wakes
// the thread (and, in a VM, the vCPU first), which in an open/fstat/close loop is about a
// fifth of the time per file. So the reader, before it sleeps, polls the device for up to
// poll_ns (`--poll-us`, default 50 µs) for the next request. It polls only while requests come
// close together (the previous one within poll_ns of the read that got it), so a mount in use
// now and then never polls, and a busy phase ends with at most one poll_ns of polling. No
// sched_yield between polls: a yielded reader is runnable, so a request that arrives meanwhile
// waits for the other task's time slice instead of waking the reader at once. Polling takes
// CPU time that other tasks could use, at most poll_ns per gap between requests; a CPU quota
// counts it, and with one CPU the client is what it keeps from running: src/mount/poll.ts turns
// it off there.
static inline int64_t lo_now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t) t.tv_sec * 1000000000 + t.tv_nsec;
}

// read(2) of the next request, polled for first when requests come close together.
static ssize_t lo_dev_read(lo_chan *c, int devfd, char *buf, size_t size) {
  lo_fast *f = lo_chan_fast(c);
  int64_t budget = f != NULL ? __atomic_load_n(&f->poll_ns, __ATOMIC_RELAXED) : 0;
  if (budget <= 0 || c->all_read) return read(devfd, buf, size);
  int64_t start = lo_now_ns();
  if (c->poll_gap_ns <= budget) {
    struct pollfd p = { .fd = devfd, .events = POLLIN };
    while (poll(&p, 1, 0) == 0 && lo_now_ns() - start <= budget) {}
    if (p.revents & POLLIN) lo_count(f, LO_C_POLLED);
  }
  ssize_t n = read(devfd, buf, size);
  c->poll_gap_ns = lo_now_ns() - start;
  return n;
}

// ---- receiving and sending -------------------------------------------------------------------

static int lo_chan_receive(struct fuse_chan **chp, char *buf, size_t size) {
  struct fuse_chan *ch = *chp;
  struct fuse_session *se = fuse_chan_session(ch);
  lo_chan *c = (lo_chan *) fuse_chan_data(ch);
  int devfd = fuse_chan_fd(ch);
  lo_request *r = &lo_current;
  for (;;) {
    if (__atomic_load_n(&c->releases, __ATOMIC_RELAXED) != NULL) lo_serve_releases(c, ch);
    r->dir_step = 0;

    lo_reader_take(c);
    ssize_t n = lo_dev_read(c, devfd, buf, size);
    int err = errno;
    if (fuse_session_exited(se)) {
      lo_reader_yield();
      return 0;
    }
    if (n < 0) {
      if (err == ENOENT) continue; // the request was interrupted before we read it
      lo_reader_yield();
      if (err == ENODEV) {         // unmounted
        fuse_session_exit(se);
        return 0;
      }
      if (err != EINTR && err != EAGAIN) perror("fuse: reading device");
      return -err;
    }
    lo_reader_serving(c);
    if ((size_t) n < sizeof(lo_in_header)) {
      fprintf(stderr, "short read on fuse device\n");
      return -EIO;
    }
    lo_in_header *in = (lo_in_header *) buf;
    const char *arg = buf + sizeof(lo_in_header);
    size_t arg_len = (size_t) n - sizeof(lo_in_header);
    r->unique = in->unique;
    r->nodeid = in->nodeid;
    r->opcode = in->opcode;
    r->open_flags = 0;
    r->rename_tmp_link = 0;
    switch (in->opcode) {
    case LO_FUSE_RENAME:
      // fuse_rename_in (newdir), then the old name and the new one, each NUL-terminated.
      r->rename_tmp_link = in->nodeid == LO_FUSE_ROOT_ID && arg_len >= sizeof(uint64_t) + 11
        && memcmp(arg + sizeof(uint64_t), ".tmp-link-", 10) == 0;
      break;
    case LO_FUSE_FORGET:
    case LO_FUSE_BATCH_FORGET:
      lo_forgotten(c, in->opcode, in->nodeid, arg, arg_len);
      break;
    case LO_FUSE_OPEN:
      if (arg_len >= sizeof(lo_open_in)) r->open_flags = ((const lo_open_in *) arg)->flags;
      break;
    case LO_FUSE_RELEASE:
      // Before libfuse closes the descriptor (and another open may get its number).
      if (arg_len >= sizeof(lo_release_in)) lo_backing_put(c, devfd, LO_FH_FD(((const lo_release_in *) arg)->fh));
      break;
    case LO_FUSE_INIT:
      if (arg_len >= sizeof(lo_init_in)) {
        const lo_init_in *init = (const lo_init_in *) arg;
        c->kernel_passthrough = (init->flags & LO_FUSE_INIT_EXT) && (init->flags2 & LO_FUSE_PASSTHROUGH2);
        c->kernel_no_opendir = (init->flags & LO_FUSE_NO_OPENDIR_SUPPORT) != 0;
        c->kernel_readdirplus = (init->flags & LO_FUSE_DO_READDIRPLUS) != 0;
        c->kernel_cache_symlinks = (init->flags & LO_FUSE_CACHE_SYMLINKS) != 0;
        c->kernel_parallel_dirops = (init->flags & LO_FUSE_PARALLEL_DIROPS) != 0;
      }
      break;
    case LO_FUSE_OPENDIR: {
      lo_fast *f = lo_chan_fast(c);
      if (c->kernel_no_opendir && f != NULL && __atomic_load_n(&f->enabled, __ATOMIC_ACQUIRE)) {
        __atomic_store_n(&c->no_opendir, 1, __ATOMIC_RELEASE);
        lo_reply_error(devfd, in->unique, ENOSYS);
        continue;
      }
      break;
    }
    case LO_FUSE_READDIR:
      if (arg_len >= sizeof(lo_read_in) && ((const lo_read_in *) arg)->fh == 0) {
        lo_read_in *rd = (lo_read_in *) (buf + sizeof(lo_in_header));
        uint64_t unique = in->unique, nodeid = in->nodeid;
        int kept = 0, err = 0;
        uint64_t fh = lo_dir_handle(c, ch, nodeid, rd->offset, &kept, &err);
        r->unique = unique;
        r->nodeid = nodeid;
        r->opcode = LO_FUSE_READDIR;
        if (fh == 0) {
          lo_reply_error(devfd, unique, err);
          continue;
        }
        rd->fh = fh;
        r->dir_fh = fh;
        r->dir_kept = kept;
        r->dir_first = rd->offset == 0;
        r->dir_unique = unique;
        r->dir_step = 2;
      }
      break;
    case LO_FUSE_READDIRPLUS:
      if (c->readdirplus && arg_len >= sizeof(lo_read_in)) {
        lo_readdirplus(c, ch, devfd, in, (const lo_read_in *) arg);
        continue;
      }
      break;
    case LO_FUSE_FSYNCDIR:
      // No fsyncdir op (the kernel stops asking after ENOSYS); libfuse would need a handle.
      if (arg_len >= sizeof(uint64_t) && *(const uint64_t *) arg == 0) {
        lo_reply_error(devfd, in->unique, ENOSYS);
        continue;
      }
      break;
    case LO_FUSE_IOCTL:
      if (arg_len >= sizeof(lo_ioctl_in) && ((const lo_ioctl_in *) arg)->fh == 0 && (((const lo_ioctl_in *) arg)->flags & LO_FUSE_IOCTL_DIR)) {
        lo_reply_error(devfd, in->unique, ENOSYS);
        continue;
      }
      break;
    }
    return (int) n;
  }
}

static int lo_reply_to(const struct iovec iov[], size_t count, uint32_t opcode, size_t arg_len) {
  if (count != 2 || iov[0].iov_len != sizeof(lo_out_header) || iov[1].iov_len != arg_len) return 0;
  const lo_out_header *out = (const lo_out_header *) iov[0].iov_base;
  return out->error == 0 && out->unique == lo_current.unique && lo_current.opcode == opcode;
}

static int lo_chan_send(struct fuse_chan *ch, const struct iovec iov[], size_t count) {
  if (iov == NULL) return 0;
  lo_chan *c = (lo_chan *) fuse_chan_data(ch);
  lo_request *r = &lo_current;
  int devfd = fuse_chan_fd(ch);
  const lo_out_header *out = count >= 1 && iov[0].iov_len >= sizeof(lo_out_header) ? (const lo_out_header *) iov[0].iov_base : NULL;

  // Replies to the channel's own requests stay here.
  if (out != NULL && (out->unique & LO_OWN) && out->unique == r->unique) {
    if (r->opcode == LO_FUSE_OPENDIR && r->dir_step == 1) {
      r->dir_error = out->error;
      r->dir_fh = 0;
      if (out->error == 0 && count == 2 && iov[1].iov_len >= sizeof(lo_open_out)) r->dir_fh = ((const lo_open_out *) iov[1].iov_base)->fh;
    } else if (r->opcode == LO_FUSE_READDIR) {
      r->own_error = out->error;
      r->plain_len = 0;
      if (out->error == 0 && count == 2 && r->plain != NULL && iov[1].iov_len <= LO_PLUS_MAX) {
        memcpy(r->plain, iov[1].iov_base, iov[1].iov_len);
        r->plain_len = iov[1].iov_len;
      }
    } else if (r->opcode == LO_FUSE_LOOKUP) {
      r->own_error = out->error;
      memset(r->entry, 0, sizeof(r->entry));
      if (out->error == 0 && count == 2 && iov[1].iov_len == LO_ENTRY_OUT) memcpy(r->entry, iov[1].iov_base, LO_ENTRY_OUT);
    }
    return 0;
  }

  struct iovec patched[2];
  lo_out_header header;
  lo_open_out open_out;
  lo_init_out init_out;
  int passthrough_fd = -1;

  if (lo_reply_to(iov, count, LO_FUSE_OPEN, sizeof(lo_open_out))) {
    memcpy(&open_out, iov[1].iov_base, sizeof(open_out));
    int held;
    int32_t id = lo_passthrough_id(c, devfd, open_out.fh, &held);
    if (held) passthrough_fd = LO_FH_FD(open_out.fh);
    if (id >= 0) {
      // The kernel reads the backing file itself, which has its own page cache.
      open_out.open_flags = (open_out.open_flags & ~LO_FOPEN_KEEP_CACHE) | LO_FOPEN_PASSTHROUGH;
      open_out.backing_id = id;
      patched[0] = iov[0];
      patched[1] = (struct iovec) { &open_out, sizeof(open_out) };
      iov = patched;
    }
  } else if (lo_reply_to(iov, count, LO_FUSE_INIT, LO_INIT_OUT_LIBFUSE)) {
    // Flags of later protocol versions in an otherwise unchanged 7.19 reply: the kernel reads
    // them, and the extended fields, whatever the minor version (fs/fuse/inode.c
    // process_init_reply), and no request changes shape.
    lo_fast *f = lo_chan_fast(c);
    int on = f != NULL && __atomic_load_n(&f->enabled, __ATOMIC_ACQUIRE);
    int plus = c->kernel_readdirplus && on;
    int symlinks = c->kernel_cache_symlinks && on;
    int passthrough = c->kernel_passthrough && f != NULL && f->passthrough_min >= 0;
    int parallel = c->kernel_parallel_dirops;
    if (plus || symlinks || passthrough || parallel) {
      memset(&init_out, 0, sizeof(init_out));
      memcpy(&init_out, iov[1].iov_base, LO_INIT_OUT_LIBFUSE);
      memcpy(&header, iov[0].iov_base, sizeof(header));
      size_t len = LO_INIT_OUT_LIBFUSE;
      if (plus) {
        // Every listing comes with each entry's attributes (lo_readdirplus). Not
        // FUSE_READDIRPLUS_AUTO: with it the kernel asks for them only in a listing's first
        // READDIR, and `ls -l` and `find`, which read a whole directory before they stat its
        // entries, then look up the rest one by one (a cold walk ran at 1.32× fuse-overlayfs
        // with it, 1.73× without: bench/README.md).
        init_out.flags |= LO_FUSE_DO_READDIRPLUS;
        c->readdirplus = 1;
      }
      if (parallel) {
        // Lookups and listings in one directory may run at once (FUSE_PARALLEL_DIROPS, 7.25,
        // as libfuse 3 offers by default). Without it the kernel holds a mutex per directory
        // around each LOOKUP and READDIR, so one lookup in the store root that waits on a
        // lower layer which stopped answering holds up every uncached lookup of every store
        // object, upper ones included. libfuse's high-level layer takes its own locks (its
        // node table and path locks) and the VFS never looks one name up twice at once.
        init_out.flags |= LO_FUSE_PARALLEL_DIROPS;
      }
      if (symlinks) {
        // The kernel keeps a symlink's target once read (FUSE_CACHE_SYMLINKS, 7.28): a
        // symlink never changes, and every node libfuse makes for a new entry is a new inode.
        init_out.flags |= LO_FUSE_CACHE_SYMLINKS;
      }
      if (passthrough) {
        init_out.flags |= LO_FUSE_INIT_EXT;
        init_out.flags2 |= LO_FUSE_PASSTHROUGH2;
        init_out.max_stack_depth = 1; // backing files on a stacked fs (overlayfs) are refused
        len = sizeof(init_out);
        c->passthrough = 1;
      }
      header.len = (uint32_t) (sizeof(header) + len);
      patched[0] = (struct iovec) { &header, sizeof(header) };
      patched[1] = (struct iovec) { &init_out, len };
      iov = patched;
    }
  }

  int rc = 0;
  if (writev(devfd, iov, (int) count) < 0) {
    int err = errno;
    // The kernel never got this open (interrupted), and libfuse releases the handle itself.
    if (passthrough_fd >= 0) lo_backing_put(c, devfd, passthrough_fd);
    // ENOENT: the request was interrupted meanwhile, and the kernel no longer wants the reply.
    if (!fuse_session_exited(fuse_chan_session(ch)) && err != ENOENT) perror("fuse: writing device");
    rc = -err;
  }

  // A READDIR the channel gave a handle: keep the handle while the listing goes on.
  if (r->dir_step == 2 && out != NULL && out->unique == r->dir_unique) {
    r->dir_step = 0;
    int more = rc == 0 && out->error == 0 && count >= 2 && iov[1].iov_len > 0;
    lo_listing_served(c, r->nodeid, r->dir_fh, r->dir_kept, r->dir_first && out->error == 0, more);
  }
  return rc;
}

static void lo_chan_destroy(struct fuse_chan *ch) {
  // The descriptor belongs to libfuse's kernel channel, which fuse_unmount closes. lo_chan
  // stays (the process ends with the mount, and the JS side may still hold the fast path's
  // state), and so does the watchdog, which stops. Closed already when the loop ran
  // (lo_loop_ended); not when fuse_new failed.
  lo_chan *c = (lo_chan *) fuse_chan_data(ch);
  lo_chan_close(c);
  lo_reader_close(c);
}

// libfuse's loop has ended, before fuse_unmount closes the device and fuse_destroy frees the
// channel (start_fuse_thread, in the patch). The JS thread may still ask for notifications
// then: the daemon notices an external unmount up to 2 s later, and meanwhile the lower store's
// watcher, the follower and `refresh` go on (fuse_native_fast_invalidate).
static void lo_loop_ended(fuse_thread_t *ft) {
  lo_fast *f = __atomic_load_n(&ft->fast, __ATOMIC_ACQUIRE);
  if (f != NULL && f->chan != NULL) lo_chan_close(f->chan);
}

static struct fuse_chan_ops lo_chan_ops = {
  .receive = lo_chan_receive,
  .send = lo_chan_send,
  .destroy = lo_chan_destroy,
};

static lo_fast *lo_fast_new(void);

// The channel the session serves: ours over the kernel channel's descriptor, or the kernel
// channel itself if ours cannot be made. Also makes the fast path's state (unconfigured).
static struct fuse_chan *lo_channel(struct fuse_chan *kernel, fuse_thread_t *ft) {
  lo_chan *c = calloc(1, sizeof(lo_chan));
  lo_fast *f = lo_fast_new();
  if (c == NULL || f == NULL || pthread_mutex_init(&c->lock, NULL) != 0 || pthread_mutex_init(&c->notify_lock, NULL) != 0 || lo_reader_init(c) != 0) return kernel;
  c->ft = ft;
  f->chan = c;
  // libfuse opens /dev/fuse without O_CLOEXEC: a child of the daemon that outlived it would
  // keep the connection, so the mount would hang instead of failing with ENOTCONN.
  fcntl(fuse_chan_fd(kernel), F_SETFD, FD_CLOEXEC);
  __atomic_store_n(&ft->fast, f, __ATOMIC_RELEASE);
  c->ch = fuse_chan_new(&lo_chan_ops, fuse_chan_fd(kernel), fuse_chan_bufsize(kernel), c);
  return c->ch != NULL ? c->ch : kernel;
}

// ---- the JS side's API (src/fuse/fast-path.ts) ---------------------------------------------

static lo_fast *lo_of(napi_env env, napi_value thread) {
  fuse_thread_t *ft;
  size_t len;
  if (napi_get_buffer_info(env, thread, (void **) &ft, &len) != napi_ok || len < sizeof(fuse_thread_t)) return NULL;
  return ft->fast;
}

// The fast path's state, empty, disabled and unconfigured (lo_channel makes it with the mount).
static lo_fast *lo_fast_new(void) {
  lo_fast *f = calloc(1, sizeof(lo_fast));
  if (f == NULL) return NULL;
  f->passthrough_min = -1;
  f->fd[0] = f->fd[1] = -1;
  f->nbuckets = 1024;
  f->lower_max = LO_MAX_LOWER_ENTRIES;
  f->buckets = calloc(f->nbuckets, sizeof(lo_entry *));
  if (f->buckets == NULL || pthread_rwlock_init(&f->lock, NULL) != 0) {
    free(f->buckets);
    free(f);
    return NULL;
  }
  return f;
}

// Whether `dir` is on a filesystem whose calls take a disk access at worst (never a network
// round trip or another daemon's answer): block devices' filesystems, memory ones, and the
// stacking ones over them. Any other (NFS, CIFS, FUSE, 9p, Ceph...) is slow for the reader.
static int lo_is_local_fs(const char *dir) {
  static const long local[] = {
    0xEF53,     // ext2, ext3, ext4
    0x58465342, // xfs
    0x9123683E, // btrfs
    0xF2F52010, // f2fs
    0xCA451A4E, // bcachefs
    0x2FC12FC1, // zfs
    0x01021994, // tmpfs
    0x858458F6, // ramfs
    0x73717368, // squashfs
    0xE0F5E1E2, // erofs
    0x794C7630, // overlayfs
    0x3153464A, // jfs
    0x52654973, // reiserfs
    0x4D44,     // vfat
    0x2011BAB0, // exfat
  };
  struct statfs st;
  if (statfs(dir, &st) != 0) return 0;
  for (size_t i = 0; i < sizeof(local) / sizeof(local[0]); i++) {
    if ((long) (uint32_t) st.f_type == local[i]) return 1;
  }
  return 0;
}

// fuse_native_fast_config(thread, upperDir, lowerDir, upperDev, lowerDev, passthroughMin[, hiddenDir[, lowerMax]]):
// configures the fast path (disabled and empty until enabled); lower files of at least
// passthroughMin bytes are opened with FUSE passthrough if the kernel has it (-1: never);
// hiddenDir is where the overlay keeps libfuse's hidden files (lo_drop_orphan); lowerMax, below
// LO_MAX_LOWER_ENTRIES, lowers the table's bound on lower entries (tests reach it with a small
// lower store).
// Once per mount; before the kernel's INIT is answered (the JS init handler) for passthrough
// to be asked for.
NAPI_METHOD(fuse_native_fast_config) {
  NAPI_ARGV(8)
  fuse_thread_t *ft;
  size_t ft_len;
  NAPI_STATUS_THROWS(napi_get_buffer_info(env, argv[0], (void **) &ft, &ft_len));
  if (ft_len < sizeof(fuse_thread_t)) {
    napi_throw_error(env, "EINVAL", "fast path: not a mount's thread buffer");
    return NULL;
  }
  NAPI_ARGV_UTF8(upper, PATH_MAX, 1)
  NAPI_ARGV_UTF8(lower, PATH_MAX, 2)
  double devs[2];
  NAPI_STATUS_THROWS(napi_get_value_double(env, argv[3], &devs[0]));
  NAPI_STATUS_THROWS(napi_get_value_double(env, argv[4], &devs[1]));
  double passthrough_min;
  NAPI_STATUS_THROWS(napi_get_value_double(env, argv[5], &passthrough_min));
  lo_fast *f = ft->fast;
  if (f == NULL) { // the mount runs on libfuse's own channel (ours could not be made)
    f = lo_fast_new();
    if (f == NULL) {
      napi_throw_error(env, "ENOMEM", "fast path: out of memory");
      return NULL;
    }
    __atomic_store_n(&ft->fast, f, __ATOMIC_RELEASE);
  }
  if (f->configured) return NULL;
  const char *dirs[2] = { upper, lower };
  for (int i = 0; i < 2; i++) {
    strncpy(f->dir[i], dirs[i], PATH_MAX - 1);
    f->dir_len[i] = strlen(f->dir[i]);
    f->dev[i] = (dev_t) devs[i];
  }
  f->passthrough_min = passthrough_min < 0 ? -1 : (int64_t) passthrough_min;
  napi_valuetype hidden_type = napi_undefined;
  if (argc >= 7) NAPI_STATUS_THROWS(napi_typeof(env, argv[6], &hidden_type));
  if (hidden_type == napi_string) {
    NAPI_ARGV_UTF8(hidden, PATH_MAX, 6)
    // As /proc/self/fd shows the descriptors' files (lo_drop_orphan).
    if (realpath(hidden, f->hidden) != NULL) f->hidden_len = strlen(f->hidden);
  }
  napi_valuetype max_type = napi_undefined;
  if (argc >= 8) NAPI_STATUS_THROWS(napi_typeof(env, argv[7], &max_type));
  if (max_type == napi_number) {
    double lower_max;
    NAPI_STATUS_THROWS(napi_get_value_double(env, argv[7], &lower_max));
    if (lower_max >= 1 && lower_max < LO_MAX_LOWER_ENTRIES) f->lower_max = (size_t) lower_max;
  }
  for (int i = 0; i < 2; i++) {
    f->slow[i] = !lo_is_local_fs(f->dir[i]);
    f->fd[i] = open(f->dir[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (f->fd[i] < 0) {
      int err = errno;
      if (i == 1) close(f->fd[0]);
      napi_throw_error(env, "EIO", err == ENOENT ? "fast path: a layer's dir is missing" : "fast path: a layer's dir cannot be opened");
      return NULL;
    }
  }
  __atomic_store_n(&f->configured, 1, __ATOMIC_RELEASE);
  return NULL;
}

// fuse_native_fast_set(thread, name, kind): kind 0 upper object, 1 lower object, 2 whiteout,
// -1 forget the name.
NAPI_METHOD(fuse_native_fast_set) {
  NAPI_ARGV(3)
  lo_fast *f = lo_of(env, argv[0]);
  if (f == NULL) return NULL;
  char name[LO_NAME_MAX * 4 + 1];
  size_t len;
  NAPI_STATUS_THROWS(napi_get_value_string_utf8(env, argv[1], name, sizeof(name), &len));
  NAPI_ARGV_INT32(kind, 2)
  if (len == 0 || len > LO_NAME_MAX) return NULL; // never in the table; lo_resolve passes such names
  lo_put(f, name, len, kind); // out of memory switches the fast path off (lo_fast.failed)
  return NULL;
}

// fuse_native_fast_reset(thread): forgets every name (the JS side pushes its index again).
NAPI_METHOD(fuse_native_fast_reset) {
  NAPI_ARGV(1)
  lo_fast *f = lo_of(env, argv[0]);
  if (f == NULL) return NULL;
  pthread_rwlock_wrlock(&f->lock);
  lo_clear_locked(f, 0);
  pthread_rwlock_unlock(&f->lock);
  return NULL;
}

// fuse_native_fast_invalidate(thread, all): makes the kernel list the root again (the lower
// store changed beside the mount), and with `all` every directory it keeps a listing of
// (`refresh`). Nothing once the mount is gone (lo_invalidate).
NAPI_METHOD(fuse_native_fast_invalidate) {
  NAPI_ARGV(2)
  lo_fast *f = lo_of(env, argv[0]);
  if (f == NULL || f->chan == NULL) return NULL;
  bool all;
  NAPI_STATUS_THROWS(napi_get_value_bool(env, argv[1], &all));
  lo_invalidate(f->chan, all);
  return NULL;
}

// fuse_native_fast_forget(thread, names): makes the kernel forget what it keeps of the root's
// entries `names` (their dentries, positive or negative, and below them, theirs): the object
// behind a name changed beside the mount (an upper leftover set aside: src/mount/daemon.ts
// dropUpper), so that its next use is looked up and its attributes and size are the new
// object's, not up to attr_timeout old; or a name the kernel was told was missing is valid now
// (a lower path the follower imported: a negative entry would hide it for --negative-timeout).
// The notifications are written from a thread of its own, one per call, in order: the kernel
// takes the root's lock for each (fs/fuse/dev.c fuse_reverse_inval_entry), which a request in
// the root may hold while it waits for the JS thread. They go through a duplicate of the
// device descriptor, taken while the channel is open, so they never reach a descriptor reused
// after the mount (ENODEV then, or ENOENT for a name the kernel does not keep: nothing to do
// either way).
typedef struct {
  int fd;
  uint32_t count;
  char *names; // `count` NUL-terminated names, one after another
} lo_forget_job;

#define LO_NOTIFY_INVAL_ENTRY 3
// Names per call at most (napi arrays longer than this: the rest are left to time out).
#define LO_FORGET_MAX 100000

static void *lo_forget_main(void *arg) {
  lo_forget_job *j = arg;
  const char *name = j->names;
  for (uint32_t i = 0; i < j->count; i++) {
    size_t len = strlen(name);
    struct {
      lo_out_header h;
      uint64_t parent;
      uint32_t namelen, flags;
    } msg = { .h = { .len = (uint32_t) (sizeof(msg) + len + 1), .error = LO_NOTIFY_INVAL_ENTRY, .unique = 0 },
              .parent = LO_FUSE_ROOT_ID, .namelen = (uint32_t) len, .flags = 0 };
    struct iovec iov[2] = { { &msg, sizeof(msg) }, { (void *) name, len + 1 } };
    if (writev(j->fd, iov, 2) < 0 && errno == ENODEV) break; // unmounted: the rest would fail too
    name += len + 1;
  }
  close(j->fd);
  free(j->names);
  free(j);
  return NULL;
}

NAPI_METHOD(fuse_native_fast_forget) {
  NAPI_ARGV(2)
  lo_fast *f = lo_of(env, argv[0]);
  if (f == NULL || f->chan == NULL) return NULL;
  uint32_t n = 0;
  NAPI_STATUS_THROWS(napi_get_array_length(env, argv[1], &n));
  if (n > LO_FORGET_MAX) n = LO_FORGET_MAX;
  if (n == 0) return NULL;
  size_t cap = (size_t) n * 64, used = 0;
  char *names = malloc(cap);
  if (names == NULL) return NULL;
  uint32_t count = 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    char name[LO_NAME_MAX * 4 + 1];
    size_t len;
    if (napi_get_element(env, argv[1], i, &v) != napi_ok ||
        napi_get_value_string_utf8(env, v, name, sizeof(name), &len) != napi_ok) continue;
    if (len == 0 || len > LO_NAME_MAX) continue;
    if (used + len + 1 > cap) {
      size_t more = cap * 2 + len + 1;
      char *grown = realloc(names, more);
      if (grown == NULL) break;
      names = grown;
      cap = more;
    }
    memcpy(names + used, name, len + 1);
    used += len + 1;
    count++;
  }
  lo_chan *c = f->chan;
  int fd = -1;
  pthread_mutex_lock(&c->notify_lock);
  if (c->ch != NULL) fd = fcntl(fuse_chan_fd(c->ch), F_DUPFD_CLOEXEC, 3);
  pthread_mutex_unlock(&c->notify_lock);
  lo_forget_job *j = fd < 0 || count == 0 ? NULL : malloc(sizeof(*j));
  if (j == NULL) {
    if (fd >= 0) close(fd);
    free(names);
    return NULL;
  }
  j->fd = fd;
  j->count = count;
  j->names = names;
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (lo_thread_create(&t, &attr, lo_forget_main, j, "lo-forget") != 0) {
    close(fd);
    free(names);
    free(j);
  }
  pthread_attr_destroy(&attr);
  return NULL;
}

// fuse_native_fast_enable(thread, on)
NAPI_METHOD(fuse_native_fast_enable) {
  NAPI_ARGV(2)
  lo_fast *f = lo_of(env, argv[0]);
  if (f == NULL) return NULL;
  bool on;
  NAPI_STATUS_THROWS(napi_get_value_bool(env, argv[1], &on));
  __atomic_store_n(&f->enabled, on && f->configured && !__atomic_load_n(&f->failed, __ATOMIC_ACQUIRE) ? 1 : 0, __ATOMIC_RELEASE);
  return NULL;
}

// fuse_native_exit_after(ms, code): the process ends with `code` within `ms` ms, whatever holds
// up its ordinary exit ("the exit deadline"). Throws if the thread cannot be started.
NAPI_METHOD(fuse_native_exit_after) {
  NAPI_ARGV(2)
  NAPI_ARGV_INT32(ms, 0)
  NAPI_ARGV_INT32(code, 1)
  lo_exit_plan *plan = malloc(sizeof(lo_exit_plan));
  if (plan == NULL) {
    napi_throw_error(env, NULL, "exit deadline: out of memory");
    return NULL;
  }
  *plan = (lo_exit_plan) { .ms = ms > 0 ? ms : 0, .code = code };
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  int rc = lo_thread_create(&t, &attr, lo_exit_after, plan, "lo-exit");
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    free(plan);
    napi_throw_error(env, NULL, "exit deadline: cannot start its thread");
  }
  return NULL;
}

// fuse_native_fast_poll(thread, us): the reader polls the device for up to `us` µs before it
// sleeps ("polling"); 0: never. Any time, from src/mount/poll.ts.
NAPI_METHOD(fuse_native_fast_poll) {
  NAPI_ARGV(2)
  lo_fast *f = lo_of(env, argv[0]);
  if (f == NULL) return NULL;
  double us;
  NAPI_STATUS_THROWS(napi_get_value_double(env, argv[1], &us));
  __atomic_store_n(&f->poll_ns, us > 0 ? (int64_t) (us * 1000) : 0, __ATOMIC_RELAXED);
  return NULL;
}

// fuse_native_fast_counters(thread): [counter..., entries, enabled] as numbers, or null.
NAPI_METHOD(fuse_native_fast_counters) {
  NAPI_ARGV(1)
  lo_fast *f = lo_of(env, argv[0]);
  napi_value out;
  if (f == NULL) {
    napi_get_null(env, &out);
    return out;
  }
  napi_create_array_with_length(env, LO_C_COUNT + 3, &out);
  for (int i = 0; i < LO_C_COUNT; i++) {
    napi_value v;
    napi_create_double(env, (double) __atomic_load_n(&f->counters[i], __ATOMIC_RELAXED), &v);
    napi_set_element(env, out, i, v);
  }
  pthread_rwlock_rdlock(&f->lock);
  double entries = (double) f->count;
  pthread_rwlock_unlock(&f->lock);
  napi_value v;
  napi_create_double(env, entries, &v);
  napi_set_element(env, out, LO_C_COUNT, v);
  napi_create_double(env, (double) __atomic_load_n(&f->enabled, __ATOMIC_ACQUIRE), &v);
  napi_set_element(env, out, LO_C_COUNT + 1, v);
  lo_chan *c = f->chan;
  napi_create_double(env, c == NULL ? 0 : (double) __atomic_load_n(&c->listed_count, __ATOMIC_RELAXED), &v);
  napi_set_element(env, out, LO_C_COUNT + 2, v);
  return out;
}
