# cython: language_level=3
"""Compiled text-frame scans (strict UTF-8, JSON nesting depth). The contract lives in
utf8_py.py (the twin)."""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.stdint cimport uint64_t
from libc.string cimport memchr, memcpy


cdef bint utf8_valid_ptr(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef uint64_t word
    cdef unsigned char c, c1
    while i < n:
        # ASCII run: 8 bytes at a time (memcpy: p + i is not aligned).
        while i + 8 <= n:
            memcpy(&word, p + i, 8)
            if word & 0x8080808080808080ULL:
                break
            i += 8
        if i >= n:
            return True
        c = p[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2:            # stray continuation byte or overlong 2-byte lead
            return False
        if c < 0xE0:            # 2-byte sequence
            if i + 1 >= n or (p[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
            continue
        if c < 0xF0:            # 3-byte sequence
            if i + 2 >= n:
                return False
            c1 = p[i + 1]
            if (c1 & 0xC0) != 0x80 or (p[i + 2] & 0xC0) != 0x80:
                return False
            if c == 0xE0 and c1 < 0xA0:      # overlong
                return False
            if c == 0xED and c1 > 0x9F:      # UTF-16 surrogate
                return False
            i += 3
            continue
        if c < 0xF5:            # 4-byte sequence
            if i + 3 >= n:
                return False
            c1 = p[i + 1]
            if ((c1 & 0xC0) != 0x80 or (p[i + 2] & 0xC0) != 0x80
                    or (p[i + 3] & 0xC0) != 0x80):
                return False
            if c == 0xF0 and c1 < 0x90:      # overlong
                return False
            if c == 0xF4 and c1 > 0x8F:      # above U+10FFFF
                return False
            i += 4
            continue
        return False
    return True


cpdef bint utf8_valid(object data) except -1:
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return utf8_valid_ptr(<const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef bint json_too_deep_ptr(const unsigned char* p, Py_ssize_t n, Py_ssize_t limit) noexcept nogil:
    cdef Py_ssize_t i = 0, j, q, k, depth = 0
    cdef const unsigned char* found
    cdef unsigned char c
    while i < n:
        c = p[i]
        if c == 0x22:                   # '"': a string, skipped with memchr to its closing quote
            j = i + 1
            while True:
                found = <const unsigned char*>memchr(p + j, 0x22, n - j) if j < n else NULL
                if found == NULL:
                    return False        # the string runs to the end: no bracket after it
                q = found - p
                k = 0                   # backslashes right before it: an odd run escapes it
                while q - 1 - k > i and p[q - 1 - k] == 0x5C:
                    k += 1
                if k & 1:
                    j = q + 1
                    continue
                i = q + 1
                break
            continue
        if c == 0x5B or c == 0x7B:      # '[' '{'
            depth += 1
            if depth > limit:
                return True
        elif c == 0x5D or c == 0x7D:    # ']' '}'
            depth -= 1
        i += 1
    return False


cpdef bint json_too_deep(object data, Py_ssize_t limit) except -1:
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return json_too_deep_ptr(<const unsigned char*>view.buf, view.len, limit)
    finally:
        PyBuffer_Release(&view)
