// Rotary embedding: rotate feature pairs of each head by position angles; sign = -1 rotates
// back (the backward). x: (rows = B·T, H, D), in place on a copy; token r sits at position
// pos0 + r % t; cos/sin: (positions, D/2), a table kept on the device.

extern "C" __global__ void rope_f32(float* x, const float* cosv, const float* sinv, long long rows, int t, int heads,
                                    int d, int interleaved, float sign, int pos0) {
    int half = d / 2;
    long long total = rows * heads * half;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        int p = (int)(i % half);
        long long rh = i / half;          // row * heads + head
        long long r = rh / heads;
        int tp = pos0 + (int)(r % t);
        float* head = x + rh * d;
        int ia = interleaved ? 2 * p : p;
        int ib = interleaved ? 2 * p + 1 : p + half;
        float a = head[ia], b = head[ib];
        float c = cosv[tp * half + p], s = sign * sinv[tp * half + p];
        head[ia] = a * c - b * s;
        head[ib] = a * s + b * c;
    }
}
