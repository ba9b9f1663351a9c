/* The site table: see pgo_sites.h. */
#include <Python.h>
#include <frameobject.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgo_sites.h"

pgo_sites_t pgo_sites;

/* 1: this code object's file is under an excluded prefix (numpy, pgo,
   the standard library, or not a file at all: "<frozen ...>"). */
static int pgo_code_excluded(pgo_sites_t *r, PyCodeObject *co) {
    uint64_t key = (uint64_t)(uintptr_t)co;
    uint32_t j;
    int ex = 0;
    Py_ssize_t len;
    const char *fn;
    if (pgo_map_reserve(&r->codes) != 0)
        return 0;
    j = pgo_map_first(&r->codes, key);
    while (r->codes.vals[j]) {
        if (r->codes.keys[j] == key)
            return r->codes.vals[j] == 2;
        j = pgo_map_next(&r->codes, j);
    }
    fn = PyUnicode_AsUTF8AndSize(co->co_filename, &len);
    if (fn == NULL) {
        PyErr_Clear();
    } else if (len > 0 && fn[0] == '<') {
        ex = strncmp(fn, "<stdin>", 7) != 0 && strncmp(fn, "<string>", 8) != 0;
    } else {
        /* The longest matching prefix decides: site-packages/ is a site
           (include) inside the standard library's lib/ (exclude), and
           numpy/ (exclude) inside site-packages/. */
        size_t best = 0;
        for (int i = 0; i < r->nprefix; i++)
            if ((size_t)len >= r->prefix_len[i] && r->prefix_len[i] > best
                    && memcmp(fn, r->prefix[i], r->prefix_len[i]) == 0) {
                best = r->prefix_len[i];
                ex = !r->prefix_include[i];
            }
    }
    /* The code object is keyed by address: keep it alive so that the
       address is never reused by another one while we record. */
    Py_INCREF(co);
    r->codes.keys[j] = key;
    r->codes.vals[j] = ex ? 2 : 1;
    r->codes.n++;
    return ex;
}

static uint32_t pgo_site_id(pgo_sites_t *r, PyFrameObject *f, PyCodeObject *co, int line) {
    uint64_t key = (uint64_t)(uintptr_t)co * 31 + (uint64_t)(uint32_t)line;
    uint32_t j, idx;
    pgo_site_t *s;
    if (pgo_map_reserve(&r->index) != 0)
        return 0;
    j = pgo_map_first(&r->index, key);
    while (r->index.vals[j]) {
        idx = r->index.vals[j] - 1;
        if (r->index.keys[j] == key && r->sites[idx].code == (PyObject *)co
                && r->sites[idx].line == line)
            return idx + 2;
        j = pgo_map_next(&r->index, j);
    }
    if (r->nsites == r->cap_sites) {
        uint32_t cap = r->cap_sites ? r->cap_sites * 2 : 256;
        pgo_site_t *ns = realloc(r->sites, cap * sizeof *ns);
        if (!ns)
            return 0;
        r->sites = ns;
        r->cap_sites = cap;
    }
    s = &r->sites[r->nsites];
    s->code = (PyObject *)co;
    Py_INCREF(co);
    s->line = line;
    s->module = NULL;
    {
        PyObject *g = PyFrame_GetGlobals(f);
        if (g != NULL) {
            PyObject *m = PyDict_Check(g) ? PyDict_GetItemWithError(g, r->name_str) : NULL;
            if (m != NULL && PyUnicode_Check(m)) {
                Py_INCREF(m);
                s->module = m;
            }
            Py_DECREF(g);
        }
        PyErr_Clear();
    }
    r->index.keys[j] = key;
    r->index.vals[j] = ++r->nsites;
    r->index.n++;
    return r->nsites + 1;
}

/* Line numbers cost a scan of the line table: a small direct-mapped cache
   by instruction offset skips it. */
#define PGO_LASTI_CACHE 4096
typedef struct {
    uintptr_t code;
    int lasti;
    uint32_t site;
    uint32_t gen;          /* pgo_sites.gen when filled: a new recording empties it */
} pgo_lasti_slot_t;
static pgo_lasti_slot_t pgo_lasti_cache[PGO_LASTI_CACHE];

uint32_t pgo_site(void) {
    pgo_sites_t *r = &pgo_sites;
    PyObject *et, *ev, *tb;
    PyFrameObject *f;
    uint32_t id = 1;
    int gc_was_on;
    if (!PyGILState_Check())
        return 0;
    /* NOTE: no collection while the frames are walked.  PyFrame_GetBack
       makes frame objects, and making a GC object can start a collection
       (3.11 collects right there); the allocation that called us may be in
       the middle of changing a container: list_resize reallocs the item
       array before it stores the new pointer, so a collection would
       traverse the freed array (json.dumps crashed that way under the
       object sampler). */
    gc_was_on = PyGC_Disable();
    PyErr_Fetch(&et, &ev, &tb);
    f = PyEval_GetFrame();
    Py_XINCREF(f);
    for (int depth = 0; f != NULL && depth < PGO_SITES_MAX_DEPTH; depth++) {
        PyCodeObject *co = PyFrame_GetCode(f);
        PyFrameObject *back;
        if (!pgo_code_excluded(r, co)) {
            int lasti = PyFrame_GetLasti(f);
            uint64_t key = (uint64_t)(uintptr_t)co ^ ((uint64_t)(uint32_t)lasti << 40);
            pgo_lasti_slot_t *slot = &pgo_lasti_cache[pgo_mix(key) & (PGO_LASTI_CACHE - 1)];
            if (slot->code == (uintptr_t)co && slot->lasti == lasti && slot->gen == r->gen) {
                id = slot->site;
            } else {
                id = pgo_site_id(r, f, co, PyFrame_GetLineNumber(f));
                slot->code = (uintptr_t)co;
                slot->lasti = lasti;
                slot->site = id;
                slot->gen = r->gen;
            }
            Py_DECREF(co);
            break;
        }
        Py_DECREF(co);
        back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    PyErr_Clear();
    PyErr_Restore(et, ev, tb);
    if (gc_was_on)
        PyGC_Enable();
    return id;
}

static void pgo_sites_clear_prefixes(pgo_sites_t *r) {
    for (int i = 0; i < r->nprefix; i++)
        free(r->prefix[i]);
    r->nprefix = 0;
}

int pgo_sites_begin(void) {
    pgo_sites_t *r = &pgo_sites;
    if (r->name_str == NULL) {
        r->name_str = PyUnicode_InternFromString("__name__");
        if (r->name_str == NULL)
            return -1;
    }
    pgo_sites_clear_prefixes(r);
    r->gen++;
    return 0;
}

int pgo_sites_add_prefix(const char *p, size_t n, int is_site) {
    pgo_sites_t *r = &pgo_sites;
    char *c;
    if (r->nprefix >= PGO_SITES_MAX_PREFIX) {
        PyErr_Format(PyExc_ValueError, "at most %d exclude and exception prefixes",
                     PGO_SITES_MAX_PREFIX);
        return -1;
    }
    c = calloc(n + 1, 1);
    if (c == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(c, p, n);
    r->prefix[r->nprefix] = c;
    r->prefix_len[r->nprefix] = n;
    r->prefix_include[r->nprefix] = is_site;
    r->nprefix++;
    return 0;
}

void pgo_sites_clear(void) {
    pgo_sites_t *r = &pgo_sites;
    for (uint32_t i = 0; i < r->nsites; i++) {
        Py_XDECREF(r->sites[i].code);
        Py_XDECREF(r->sites[i].module);
    }
    for (uint32_t i = 0; i < r->codes.cap; i++)
        if (r->codes.vals[i])
            Py_DECREF((PyObject *)(uintptr_t)r->codes.keys[i]);
    free(r->sites);
    r->sites = NULL;
    r->nsites = r->cap_sites = 0;
    pgo_map_free(&r->index);
    pgo_map_free(&r->codes);
    pgo_sites_clear_prefixes(r);
}
