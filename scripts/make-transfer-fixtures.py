"""The numpy reference for LogME, LEEP and NCE, as thuml/LogME defines them (LogME by the fixed-point
iteration on the SVD of the features, "Ranking and Tuning Pre-trained Models"; LEEP from the
empirical joint of soft source predictions and target labels; NCE from hard predictions, with
0 log 0 = 0), on fixed synthetic features and predictions: cases with more examples than features
and fewer, two and three target classes, source label spaces of another size. Prints JSON."""
import json
import numpy as np


def logme(f, y):
    f = f.astype(np.float64)
    n, d = f.shape
    if n > d:
        # thuml's truncated_svd: the SVD of F^T F, singular values square-rooted
        u, s, vh = np.linalg.svd(f.T @ f)
        s = np.sqrt(s)
        u_times_sigma = f @ vh.T
        k = int(np.sum(s > 1e-10))
        s = s[:k]
        u = u_times_sigma[:, :k] / s.reshape(1, -1)
    else:
        u, s, vh = np.linalg.svd(f, full_matrices=False)
        k = int(np.sum(s > 1e-10))
        u, s = u[:, :k], s[:k]
    sigma = (s ** 2).reshape(-1, 1)
    evidences = []
    for c in range(int(y.max()) + 1):
        y_ = (y == c).astype(np.float64).reshape(-1, 1)
        x = u.T @ y_
        x2 = x ** 2
        res_x2 = (y_ ** 2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            t_ = alpha / beta
            if abs(t_ - t) / t <= 1e-3:
                break
        evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
                    - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def leep(p, y):
    n, cs = p.shape
    ct = int(y.max()) + 1
    joint = np.zeros((ct, cs))
    for i in range(ct):
        joint[i] = (p[y == i] / float(n)).sum(axis=0)
    cond = (joint / joint.sum(axis=0, keepdims=True)).T
    pred = p @ cond
    return float(np.mean(np.log(pred[np.arange(n), y])))


def nce(z, y):
    ct, cs, n = int(y.max()) + 1, int(z.max()) + 1, len(z)
    joint = np.zeros((ct, cs))
    for s, t in zip(z, y):
        joint[t, s] += 1.0 / n
    pz = joint.sum(axis=0)
    h = 0.0
    for s in range(cs):
        if pz[s] <= 0:
            continue
        for t in range(ct):
            q = joint[t, s] / pz[s]
            if q > 0:
                h -= pz[s] * q * np.log(q)
    return float(-h)


rng = np.random.default_rng(7)
cases = []
for (n, d, ct, cs, sep) in [(60, 16, 2, 2, 1.0), (20, 32, 2, 3, 0.5), (90, 12, 3, 2, 2.0), (40, 40, 3, 5, 0.2), (200, 8, 2, 2, 0.0)]:
    y = rng.integers(0, ct, n)
    y[:ct] = np.arange(ct)  # every class present
    means = rng.normal(0, 1, (ct, d)) * sep
    f = (means[y] + rng.normal(0, 1, (n, d))).astype(np.float32)
    logits = rng.normal(0, 1, (n, cs)) + sep * np.eye(ct, cs)[y] * 2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    p = p.astype(np.float32)
    z = p.astype(np.float64).round(6).argmax(axis=1)
    cases.append({
        "n": n, "d": d, "classes": ct, "source_classes": cs,
        "features": f.astype(np.float64).round(6).ravel().tolist(),
        "labels": y.tolist(), "probs": p.astype(np.float64).round(6).ravel().tolist(),
        "logme": logme(np.array(f.astype(np.float64).round(6)), y),
        "leep": leep(np.array(p.astype(np.float64).round(6)), y),
        "nce": nce(z, y),
    })
print(json.dumps({"generator": "scripts/make-transfer-fixtures.py (numpy " + np.__version__ + ")", "cases": cases}))
