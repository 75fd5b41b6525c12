"""The published negative style embedding: the CFG null branch's style in DiffRhythm's inference.

512 float32 values, unit norm, as `infer/example/vocal.npy` in ASLP-lab/DiffRhythm (Apache-2.0;
sha256 of that .npy file 6cb7d74eb7a8eda12acb8247b21d373928301db8a8cb0db480d341799fed3ce5, the
same object as the DiffRhythm Space's `src/negative_prompt.npy` that fal's demo loads). Kept here
as little-endian float32 bytes so the package needs no data files; `load()` checks their sha256.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

SHA256 = "147fd4052da6bfd1092a2e022e1c92bd357367b9f39283214cb6a96dbf63a5a3"
DATA = (
    "rus9vfggmbkyhp+93J8BPRzBILzdXpc8Th/BvWnZlb1klpe8shgSPbogLD3udhw9bc9ovR4FEL1GZlO9820TPTExWr0U54M9WJs3vVmH77y6DvO7"
    "ONj+PPrEzrvSn1w8IRdYvKgItD3hC7e8Cl1KPesTObw8C7U9kMiNPJ8stzzu5/S7culgveQhPr16q7c9cBuYPKgDKry4PT485HD4PGQObT0gC1u8"
    "Ge4RPVC0EL2tcTk9EGquPTC9kb3cx8o8KGO1u1Bggz307cm8/LSDvQBdgL109/C77LCEPVRbSjyubpe9zCb6OZqI4bzu0SI9+mANvHcgAD2YKzC7"
    "vgv1vGJRbr10iOg8KKkqPctMZz3GX5u8oGfRvDRBnT12n1Y8qPVnvF39kr3ikoQ9SF4xPdw7IT340mO97FYHvd4LeDz4zmC9LL6MPb55jr2P0+W8"
    "UITJvFEDoLyARh689C7jPMCIsLyMHJ69anXcvIj1Lj1EdkO94KBmvCI+1jwUBBw9NnWaPerjIT3S8J88xHmCvaYkLT1ydI09MNSlvZjHSj1MRoW9"
    "Zp70vHpVQLu0YTy9ssq6PVbvhDw9XgW9Jd+TPJdYMz27Da+9/ObMPDnIjj1hOI497DsLPaB5/rxfdMe90lKZPNxMvbsm7Ck8ckGWPGjP0zzEBl89"
    "tPMbvZtLbLsHEFI9jEgxPRYdpT0Obyy9ZENVvVR1QTyPpKi8Ni8MPagofjyyu028e2EEvDoGr7l7Ijq90qPmPGo3xrxEuTe9XvgaPLukgjyckym9"
    "LkbUOodbk7xYMnE9Cq5bvTyxET3E9xw9ENSivRDnlbpgNQu98q4MvD5AB73UIjK9bHHCuzZ9dbw6Gww8zuWgvLcfJj2EjwG9o97LvNzMXr0cSd47"
    "+gShvE7+Bz1kCzm85yEEPbrRCT2iPBy8lc1evbCksb1mdHQ9KOMOvETfsjy8zG67OKnEvGvdobxscRe9W7LgO9Cvhr3cdNQ8eG2HvU5qBzzv3kI8"
    "bFNnvRBBlT1O8MA8/qZdPD2IjT2IJlW9ufxPvfqDyLxCoc+9EDHWu5pXeLnbpPu8e6V1vKqCn7yG1xE+yDYfPbyuHLz9bhC7c14uvTSp6Duql4S9"
    "qDINPH1dXjyTJ0C9vKO4vOowljx4+Zw8CpiWvJb0bbzl3pq7JyCxPBULKjswgd48MNhTvfRKkb0uGzY9XII7PTTq87sevrK8AkXaPHzNcj2E6sm8"
    "0Lo6PCyPS70Mxn291DeZPcpFcDwgEgO8NPG1uxW5Krz8ZbY6shKjPbFWJr3q12c9cIbVvNjE5ztY/7Y730AuumaSPT1846C9LHqiu1V8lj28qUS9"
    "zfNYvf4RVzzaoIk9cKTVvNNIc7zUDS87/3t2vUCmNTzixoe9QpmnvSoosjssrF69hmCOvRygT73wgm49vnupPKbmCT3XmTS9dHjYvKL0KLvY3s67"
    "zDkevRGgRD26xXw8I6G2PGiZCr0wEJa83tFlPWzn/7zYpnw8i5xYuW/gd7uGk6y8hmedOx5l0LzcwmQ8nkrXvO0MGr3Q8N68cLBPPQh1v7y+S5A7"
    "Q7+JPAobxrxgAgK92GM4PjQuUjxEn8c95pkFvf6OhD1KRn882QtPvDpziDyW4/g9oPkEvcyPiT1fiE09pokKuyDtrL2gCcS8nhXuu4aHqjvaRsi9"
    "4I3HvabyzjwENxS9bWXYPC9vFz21NlW95KWKvZxWLz3oY2s9xVmuvTULib0xkGw9KjjvvK5hkL0eOFE9UqYvvQthab1NGvY9yE49vA5kpzsCLdE8"
    "rkSfPCTEVT0tSFK6YKouPF5kFbz1TL48dOuPPRkMqr1DiN88kjUxPYwsAr1xcXe9hS6lvNLPhD2yrSs9okDnPHRidjyMDc88MP+9vVSs67ueF+48"
    "qJySPb8L1bzsEeQ8sE2SPKL5dL0lkUU9ctsrPQaKSjzsA9M8JgiDPb6ayzxopII9eGVpPfuUSL3ELyC7AkqLPQwyfb10ona8ui4evciMEL3jLZ29"
    "pI+AvHC8Wbzi/Zw71j8zOzIwZj3Wud28qRVFvUVYD71no7C8A02bvZIx2rwAETE9hDhWvb2BPTtkPtO8kEg6PUziHr0x04M9xcW/vOBAHb3ST0s9"
    "xDh3vCDl9bsKJeG8sFCvvDy/TTzyHJG8VpwPvRxD3DzF1v68ONIIOoHG0rwgEwe83vCMu5R0hj18pnm7Dtidu4h9Ir1SMz49pLcavfpLkTzac0U9"
    "VAKjvM5pFb3LvPu8+pdwPEILbLsmZW48TgplvavFDjx6Mwq9LEeoPFcCT7tCNnM9Lo9DPXosJ71o34y7EKDKvAA60js89jG8qbyNvUqb97zSz+m9"
    "0LsqvTssjD2K8S08kKVavUTtBrwxhz07BoSmOwbKZLz8F8a8rCYjPAgNl7xuyz098PKnPLKFgz3Ma4m9WODEvO+GAroStp69DHrIOznEUrxPzgk9"
    "0M69POIezL1U4+g81oVuPQuv5LwNSLo929BtvdzvPz0Ub668AKhuO5zQXjy6u9W8wwnCvG7eDz1Iy7w8MNAuPR+olLsDL469ohfEO8ywNL3hXoE8"
    "Fh9vvXY1Dzyk2FI89QYiPaSYEj1U7DO9wPfNPAhPnzwMqhY8HKI2Pbxt4LzEiC49zkJuPOAli73I9BU8qAwqvSA5J7zCkBY8hP5fPeyamj1ya3c9"
    "IldBu/U8rr06yve46ZfUvbrsU708c4O8CMPqvDaUO70="
)


def load() -> Any:
    """`[1, 512]` float32 tensor.

    Raises:
        ValueError: the bytes above were altered.
    """
    import numpy as np
    import torch

    raw = base64.b64decode(DATA)
    if hashlib.sha256(raw).hexdigest() != SHA256:
        raise ValueError("the bundled negative style embedding is corrupt")
    return torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy()).reshape(1, 512)
