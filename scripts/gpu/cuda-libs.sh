# cuda-libs.sh — source me on a GPU machine: points LD_LIBRARY_PATH at the CUDA 13 user-space
# libraries (cuBLAS, cuBLASLt, cuRAND, NVRTC, cudart, cuDNN 9 and the nvJitLink its runtime-compiled
# engines may load) that the CUDA build of exp links, found
# in PyTorch's pip wheels or a CUDA toolkit (the driver's libcuda.so.1 is on the loader path).
__exp_found=$(find /opt/torch /usr/local /opt /usr/lib /root /home -xdev \( -name 'libcublas.so.13' -o -name 'libcublasLt.so.13' -o -name 'libcurand.so.10' -o -name 'libnvrtc.so.13' -o -name 'libcudart.so.13' -o -name 'libcudnn.so.9' -o -name 'libnvJitLink.so.13' \) 2>/dev/null)
__exp_dirs=$(for n in cublas cublasLt curand nvrtc cudart cudnn nvJitLink; do echo "$__exp_found" | grep "/lib$n\.so\." | head -1 | xargs -r dirname; done | awk 'NF && !s[$0]++' | paste -sd:)
export LD_LIBRARY_PATH="$__exp_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
unset __exp_found __exp_dirs
