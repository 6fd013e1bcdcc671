//! A network as one flat `f32` vector: every float tensor the network holds (weights and
//! BatchNorm running statistics) in the derive's field order, so collectives, channels,
//! checkpoints and the parameter server move a CNN like any other model.
//!
//! The running statistics are not trained by gradients; they are averaged with the
//! parameters, so every worker evaluates the same model (the original kept them local).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::algo::learner::Segment;

/// One tensor's place in the flat vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// Path of the tensor in the network (`blocks.3.conv1`), unique.
    pub name: String,
    /// Number of values.
    pub len: usize,
    /// True for parameters trained by gradients; false for running statistics.
    pub trainable: bool,
}

/// The order and kinds of a network's tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The tensors, in order.
    pub slots: Vec<Slot>,
}

impl Layout {
    /// The layout of `net` (on an autodiff device, so trainable tensors say so).
    pub fn of<M: Module>(net: &M) -> Self {
        struct Walk {
            path: Vec<String>,
            slots: Vec<Slot>,
        }
        impl ModuleVisitor for Walk {
            fn enter_module(&mut self, name: &str, _container: &str) {
                self.path.push(name.to_string());
            }
            fn exit_module(&mut self, _name: &str, _container: &str) {
                self.path.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let value = param.val();
                // The derive enters every field, parameters included, so paths are unique.
                self.slots.push(Slot {
                    name: self.path.join("."),
                    len: value.shape().num_elements(),
                    trainable: value.is_require_grad(),
                });
            }
        }
        let mut walk = Walk {
            path: Vec::new(),
            slots: Vec::new(),
        };
        net.visit(&mut walk);
        Layout { slots: walk.slots }
    }

    /// Total values.
    pub fn len(&self) -> usize {
        self.slots.iter().map(|s| s.len).sum()
    }

    /// True for a network without tensors.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Values trained by gradients.
    pub fn trainable(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.trainable)
            .map(|s| s.len)
            .sum()
    }

    /// The segments the worker loop reports.
    pub fn segments(&self) -> Vec<Segment> {
        self.slots
            .iter()
            .map(|s| Segment::new(&s.name, s.len))
            .collect()
    }

    /// One flag per value: true where the value is trained by gradients.
    pub fn trainable_mask(&self) -> Vec<bool> {
        self.slots
            .iter()
            .flat_map(|s| std::iter::repeat_n(s.trainable, s.len))
            .collect()
    }

    /// A 64-bit FNV-1a hash of the slots' names, sizes and kinds: two networks with the
    /// same hash lay their vectors out the same way.
    pub fn hash(&self) -> u64 {
        crate::algo::learner::fnv1a(
            self.slots
                .iter()
                .map(|slot| format!("{}:{}:{};", slot.name, slot.len, slot.trainable)),
        )
    }
}

/// Appends a tensor's values to `out`.
fn push_values<const D: usize>(tensor: Tensor<D>, out: &mut Vec<f32>) {
    let data = tensor.into_data();
    match data.as_slice::<f32>() {
        Ok(values) => out.extend_from_slice(values),
        Err(_) => {
            let data = data.convert::<f32>();
            out.extend_from_slice(data.as_slice::<f32>().expect("converted to f32"));
        }
    }
}

/// The values of `net` (weights and running statistics), in layout order. Call it on
/// `net.valid()`: running statistics updated by a training forward are only settled then.
pub fn flatten<M: Module>(net: &M) -> Vec<f32> {
    struct Flatten(Vec<f32>);
    impl ModuleVisitor for Flatten {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            push_values(param.val(), &mut self.0);
        }
    }
    let mut f = Flatten(Vec::new());
    net.visit(&mut f);
    f.0
}

/// Writes the running statistics of `net` (call it on `net.valid()`, as [`flatten`]) into
/// their places in `out`, a vector of `layout`; trainable values are left as they are, and
/// never read out of the network (most of a network's values).
pub fn copy_statistics<M: Module>(net: &M, layout: &Layout, out: &mut [f32]) {
    struct Stats<'a> {
        slots: std::slice::Iter<'a, Slot>,
        at: usize,
        out: &'a mut [f32],
    }
    impl ModuleVisitor for Stats<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let slot = self
                .slots
                .next()
                .expect("the network has the layout's tensors");
            if !slot.trainable {
                let mut values = Vec::with_capacity(slot.len);
                push_values(param.val(), &mut values);
                self.out[self.at..self.at + slot.len].copy_from_slice(&values);
            }
            self.at += slot.len;
        }
    }
    assert_eq!(out.len(), layout.len(), "vector and layout sizes differ");
    net.visit(&mut Stats {
        slots: layout.slots.iter(),
        at: 0,
        out,
    });
}

/// `net` with its values replaced by `values` (layout order); tensors keep their ids, devices
/// and whether they require gradients.
pub fn load<M: Module>(net: M, values: &[f32]) -> M {
    struct Load<'v> {
        values: &'v [f32],
        at: usize,
    }
    impl ModuleMapper for Load<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|tensor| {
                let shape = tensor.shape();
                let n = shape.num_elements();
                let data = TensorData::new(self.values[self.at..self.at + n].to_vec(), shape);
                self.at += n;
                let fresh = Tensor::from_data(data, &tensor.device());
                if tensor.is_require_grad() {
                    fresh.require_grad()
                } else {
                    fresh
                }
            })
        }
    }
    let mut l = Load { values, at: 0 };
    let net = net.map(&mut l);
    assert_eq!(l.at, values.len(), "vector and network sizes differ");
    net
}

/// The gradients in `grads` of `net`'s trainable tensors, in layout order, with zeros in
/// the places of running statistics.
pub fn flatten_grads<M: Module>(net: &M, grads: &GradientsParams, out: &mut Vec<f32>) {
    struct Grads<'g> {
        grads: &'g GradientsParams,
        out: &'g mut Vec<f32>,
    }
    impl ModuleVisitor for Grads<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            match self.grads.get::<D>(param.id) {
                Some(g) => push_values(g, self.out),
                None => {
                    let n = param.val().shape().num_elements();
                    self.out.resize(self.out.len() + n, 0.0);
                }
            }
        }
    }
    out.clear();
    net.visit(&mut Grads { grads, out });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::cnn::nets::{MobileNet, Net, NetShape, ResNet};

    const CIFAR: NetShape = NetShape {
        channels: 3,
        classes: 10,
        width: 1.0,
    };

    /// The published sizes: trainable parameters, then the vector with BatchNorm statistics.
    #[test]
    fn full_size_networks_have_the_published_parameter_counts() {
        let device = Device::flex().autodiff();
        let r20 = Layout::of(&ResNet::resnet20(CIFAR, &device));
        assert_eq!((r20.trainable(), r20.len()), (272_474, 274_042));
        let mobile = Layout::of(&MobileNet::new(CIFAR, &device));
        assert_eq!((mobile.trainable(), mobile.len()), (3_217_226, 3_239_114));
        let r18 = Layout::of(&ResNet::resnet18(CIFAR, &device));
        assert_eq!((r18.trainable(), r18.len()), (11_173_962, 11_183_562));
        assert_ne!(r20.hash(), mobile.hash());
        let narrow = Layout::of(&ResNet::resnet20(
            NetShape {
                width: 0.5,
                ..CIFAR
            },
            &device,
        ));
        assert_ne!(
            r20.hash(),
            narrow.hash(),
            "another width, the same layout hash"
        );
        assert_eq!(
            r20.hash(),
            Layout::of(&ResNet::resnet20(CIFAR, &device)).hash()
        );
    }

    /// A network loaded from another's vector computes the same outputs (training mode, so
    /// BatchNorm uses batch statistics, and eval mode, so it uses the loaded running ones),
    /// and flattens back to the same vector.
    #[test]
    fn a_network_loaded_from_a_vector_is_the_same_network() {
        let device = Device::flex().autodiff();
        let shape = NetShape {
            width: 0.25,
            ..CIFAR
        };
        let a = ResNet::resnet20(shape, &device);
        let x = Tensor::<4>::random(
            [4, 3, 32, 32],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        // A training forward moves the running statistics away from their initial values.
        let _ = a.forward(x.clone());
        let values = flatten(&a.valid());
        let b = load(ResNet::resnet20(shape, &device), &values);
        assert_eq!(flatten(&b.valid()), values);
        let out = |n: &ResNet| n.valid().forward(x.clone().inner()).into_data();
        assert_eq!(out(&a), out(&b));
        let train = |n: &ResNet| n.forward(x.clone()).into_data();
        assert_eq!(train(&a), train(&b));
        // Statistics are not trainable, weights are.
        let layout = Layout::of(&b);
        let stats: Vec<_> = layout.slots.iter().filter(|s| !s.trainable).collect();
        assert!(
            stats.iter().all(|s| s.name.contains("running_")),
            "{stats:?}"
        );
        assert_eq!(stats.len(), 2 * 21);
        // The statistics alone land where `flatten` puts them (the training forwards above
        // moved them); nothing else is touched.
        let now = flatten(&b.valid());
        let mut out = vec![f32::NAN; layout.len()];
        copy_statistics(&b.valid(), &layout, &mut out);
        for ((o, v), t) in out.iter().zip(&now).zip(layout.trainable_mask()) {
            if t {
                assert!(o.is_nan());
            } else {
                assert_eq!(o, v);
            }
        }
    }
}
