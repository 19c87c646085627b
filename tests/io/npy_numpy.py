"""gradproof's .npy reader and writer against numpy's own (ctest io.npy_numpy).

Files numpy writes (every dtype gradproof reads, C and Fortran order, format versions 1.0, 2.0 and
3.0, bfloat16 as void '<V2' and as uint16) are read by gradproof and must give numpy's values
exactly; files gradproof writes are read by numpy and must give the values written. Runs with
/usr/bin/python3 and Debian's python3-numpy (packages.txt, build group).

usage: npy_numpy.py NPY_TOOL WORK_DIR
"""
import os
import struct
import subprocess
import sys

import numpy as np

tool, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL", what)


def bf16_bits(values):
    """bfloat16 bits of float32 values (round to nearest even), as uint16."""
    u = np.asarray(values, np.float32).view(np.uint32).astype(np.uint64)
    one, sixteen = np.uint64(1), np.uint64(16)
    return ((u + np.uint64(0x7FFF) + ((u >> sixteen) & one)) >> sixteen).astype(np.uint16)


rng = np.random.default_rng(14)
base = rng.standard_normal((3, 4, 5)) * 3
shapes = [(), (7,), (3, 4), (3, 4, 5), (2, 0, 3)]

for shape in shapes:
    values = base.reshape(-1)[: int(np.prod(shape))].reshape(shape)
    arrays = {
        "float16": values.astype(np.float16),
        "float32": values.astype(np.float32),
        "float64": values,
        "int32": np.round(values * 10).astype(np.int32),
        "int64": np.round(values * 10).astype(np.int64),
    }
    bits = bf16_bits(values.reshape(-1))
    expected_bf16 = (bits.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64).reshape(shape)
    bits = bits.reshape(shape)
    for order in ("C", "F"):
        for version in ((1, 0), (2, 0), (3, 0)):
            cases = [(d, a, a.astype(np.float64)) for d, a in arrays.items()]
            cases.append(("bfloat16", bits.reshape(-1).view("V2").reshape(shape), expected_bf16))
            cases.append(("bfloat16", bits, expected_bf16))  # uint16
            for dtype, arr, want in cases:
                arr = np.array(arr, order=order)
                path = os.path.join(work, f"np_{dtype}_{arr.dtype.str.replace('<', 'l').replace('|', 'p')}"
                                          f"_{order}_{version[0]}_{len(shape)}.npy")
                with open(path, "wb") as f:
                    np.lib.format.write_array(f, arr, version=version)
                r = subprocess.run([tool, "dump", path], capture_output=True, text=True)
                what = f"gradproof reads numpy's {path}"
                if r.returncode != 0:
                    check(False, f"{what}: {r.stderr.strip()}")
                    continue
                lines = r.stdout.splitlines()
                head = lines[0].split(" ", 2)
                got = np.array([float(v) for v in lines[1:]])
                fortran = order == "F" and arr.ndim > 1 and arr.size > 0
                check(head[0] == dtype and (head[1] == "f") == np.isfortran(arr) and got.size == want.size
                      and np.array_equal(got, want.reshape(-1)),
                      f"{what}: {lines[0]} vs {dtype} {order} {shape}; fortran={fortran}")

        # The other way round: gradproof writes, numpy reads.
        for dtype in ("float16", "bfloat16", "float32", "float64", "int32", "int64"):
            v = arrays.get(dtype, values).astype(np.float64)
            path = os.path.join(work, f"gp_{dtype}_{order}_{len(shape)}.npy")
            args = [tool, "write", path, dtype, order.lower(), ",".join(map(str, shape))]
            args += [repr(float(x)) for x in v.reshape(-1)]
            r = subprocess.run(args, capture_output=True, text=True)
            if r.returncode != 0:
                check(False, f"gradproof writes {path}: {r.stderr.strip()}")
                continue
            got = np.load(path)
            if dtype == "bfloat16":
                check(got.dtype == np.dtype("V2"), f"numpy reads {path} as V2 ({got.dtype})")
                got = (np.frombuffer(got.tobytes(), np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
                got = got.reshape(shape).astype(np.float64)
                want = expected_bf16
            else:
                want = v.astype(dtype)
                check(got.dtype == np.dtype(dtype), f"numpy reads {path} as {got.dtype}")
            check(got.shape == shape and np.array_equal(got, want), f"numpy reads {path}: values")
            check(np.isfortran(np.load(path)) == (order == "F" and len(shape) > 1 and min(shape) > 0)
                  or len(shape) <= 1 or 0 in shape, f"numpy reads {path}: order")
            # numpy writes the same header for the same array (1.0; a float16/bfloat16 header aside)
            if dtype in ("float32", "float64", "int32", "int64"):
                ref = os.path.join(work, f"ref_{dtype}_{order}_{len(shape)}.npy")
                a = np.array(want, order=order)  # (ascontiguousarray would make a 0-d array 1-d)
                np.save(ref, a)
                check(open(ref, "rb").read() == open(path, "rb").read(), f"{path} has the bytes np.save writes")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
